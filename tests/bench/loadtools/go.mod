module meshd.dev/loadtools

go 1.24
