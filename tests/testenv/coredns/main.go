// A CoreDNS with the plugins meshd's Corefile block uses (errors, cache, forward), plus bind
// and log, for the test that sends mesh names through CoreDNS to meshd's DNS responder. Built
// from the Go module proxy by build.sh; the version is the one go.mod requires.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/log"
)

func init() {
	// The order plugins run in, as CoreDNS's plugin.cfg gives it for these five.
	dnsserver.Directives = []string{"bind", "errors", "log", "cache", "forward"}
}

func main() { coremain.Run() }
