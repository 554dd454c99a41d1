// Command etcd is etcd's own server entry point, built from the etcd release that the chosen
// Kubernetes version depends on, so the API server always gets an etcd it accepts.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
