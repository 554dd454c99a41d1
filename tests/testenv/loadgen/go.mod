module meshd.test/loadgen

go 1.22
