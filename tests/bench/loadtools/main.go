// Command loadtools holds the backends and load generators of meshd's data plane benchmark:
// small, fast programs so that what the benchmark measures is the proxy between them.
//
// Every load generator is bounded by a duration and stops by itself; it prints one JSON
// object with what it measured.
package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	cmd, args := os.Args[1], os.Args[2:]
	switch cmd {
	case "http-backend":
		httpBackend(args)
	case "tcp-echo":
		tcpEcho(args)
	case "udp-echo":
		udpEcho(args)
	case "tcp-rr":
		tcpRR(args)
	case "tcp-conn":
		tcpConn(args)
	case "tcp-bulk":
		tcpBulk(args)
	case "udp-rr":
		udpRR(args)
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage: loadtools COMMAND [flags]
backends:   http-backend -listen ADDR -name NAME   (HTTP/1.1 and h2c; gRPC-framed POST answered with trailers)
            tcp-echo -listen ADDR
            udp-echo -listen ADDR
load:       tcp-rr -target ADDR -conns N -duration D -size BYTES
            tcp-conn -target ADDR -conns N -duration D -size BYTES   (a new connection per exchange)
            tcp-bulk -target ADDR -conns N -duration D
            udp-rr -target ADDR -clients N -duration D -size BYTES [-unconnected]`)
	os.Exit(2)
}

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "loadtools: "+format+"\n", a...)
	os.Exit(1)
}

// ---- backends ----

func httpBackend(args []string) {
	fs := flag.NewFlagSet("http-backend", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:8080", "address to listen on")
	name := fs.String("name", "backend", "name put in each response")
	fs.Parse(args)
	body := []byte("ok " + *name + "\n")
	// A gRPC unary reply: one uncompressed message of 16 bytes, 5-byte length prefix.
	grpcReply := make([]byte, 5+16)
	binary.BigEndian.PutUint32(grpcReply[1:5], 16)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Content-Type") == "application/grpc" {
			io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/grpc")
			w.Header().Set("Trailer", "Grpc-Status, Grpc-Message")
			w.WriteHeader(200)
			w.Write(grpcReply)
			w.Header().Set("Grpc-Status", "0")
			w.Header().Set("Grpc-Message", "")
			return
		}
		if r.Method == http.MethodPost || r.Method == http.MethodPut {
			n, _ := io.Copy(io.Discard, r.Body)
			fmt.Fprintf(w, "received %d bytes at %s\n", n, *name)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		w.Write(body)
	})
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{Addr: *listen, Handler: handler, Protocols: &protocols}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fail("cannot listen on %s: %v", *listen, err)
	}
	fmt.Println("listening", ln.Addr())
	if err := srv.Serve(ln); err != nil {
		fail("serve: %v", err)
	}
}

func tcpEcho(args []string) {
	fs := flag.NewFlagSet("tcp-echo", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:7000", "address to listen on")
	fs.Parse(args)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fail("cannot listen on %s: %v", *listen, err)
	}
	fmt.Println("listening", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			fail("accept: %v", err)
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
		}()
	}
}

func udpEcho(args []string) {
	fs := flag.NewFlagSet("udp-echo", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:7001", "address to listen on")
	fs.Parse(args)
	pc, err := net.ListenPacket("udp", *listen)
	if err != nil {
		fail("cannot listen on %s: %v", *listen, err)
	}
	fmt.Println("listening", pc.LocalAddr())
	buf := make([]byte, 65536)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			fail("read: %v", err)
		}
		pc.WriteTo(buf[:n], from)
	}
}

// ---- load generators ----

type result struct {
	Kind       string  `json:"kind"`
	Target     string  `json:"target"`
	Seconds    float64 `json:"seconds"`
	Requests   int64   `json:"requests,omitempty"`
	Errors     int64   `json:"errors"`
	PerSecond  float64 `json:"perSecond,omitempty"`
	P50Ms      float64 `json:"p50Ms,omitempty"`
	P99Ms      float64 `json:"p99Ms,omitempty"`
	Bytes      int64   `json:"bytes,omitempty"`
	MiBPerSec  float64 `json:"mibPerSecond,omitempty"`
	FirstError string  `json:"firstError,omitempty"`
}

type latencies struct {
	mu  sync.Mutex
	all []time.Duration
}

func (l *latencies) add(d []time.Duration) {
	l.mu.Lock()
	l.all = append(l.all, d...)
	l.mu.Unlock()
}

func (l *latencies) quantile(q float64) float64 {
	if len(l.all) == 0 {
		return 0
	}
	sort.Slice(l.all, func(i, j int) bool { return l.all[i] < l.all[j] })
	i := int(q * float64(len(l.all)-1))
	return float64(l.all[i].Microseconds()) / 1000
}

type errs struct {
	n     atomic.Int64
	first atomic.Value
}

func (e *errs) add(err error) {
	if e.n.Add(1) == 1 {
		e.first.Store(err.Error())
	}
}

func (e *errs) firstText() string {
	if v, ok := e.first.Load().(string); ok {
		return v
	}
	return ""
}

func emit(r result) {
	json.NewEncoder(os.Stdout).Encode(r)
}

func tcpRR(args []string) {
	fs := flag.NewFlagSet("tcp-rr", flag.ExitOnError)
	target := fs.String("target", "", "address to connect to")
	conns := fs.Int("conns", 16, "concurrent connections")
	duration := fs.Duration("duration", 5*time.Second, "how long to run")
	size := fs.Int("size", 64, "bytes per request (echoed back)")
	fs.Parse(args)
	var lat latencies
	var e errs
	var total atomic.Int64
	deadline := time.Now().Add(*duration)
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < *conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", *target)
			if err != nil {
				e.add(err)
				return
			}
			defer c.Close()
			req := bytes.Repeat([]byte{'x'}, *size)
			resp := make([]byte, *size)
			local := make([]time.Duration, 0, 1<<16)
			for time.Now().Before(deadline) {
				t0 := time.Now()
				if _, err := c.Write(req); err != nil {
					e.add(err)
					break
				}
				if _, err := io.ReadFull(c, resp); err != nil {
					e.add(err)
					break
				}
				local = append(local, time.Since(t0))
			}
			total.Add(int64(len(local)))
			lat.add(local)
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	emit(result{Kind: "tcp-rr", Target: *target, Seconds: secs, Requests: total.Load(),
		Errors: e.n.Load(), PerSecond: float64(total.Load()) / secs,
		P50Ms: lat.quantile(0.5), P99Ms: lat.quantile(0.99), FirstError: e.firstText()})
}

// tcpConn opens a new connection for every exchange: connect, send size bytes, read their
// echo, close. So every exchange pays a TCP handshake and teardown, and anything that runs at
// connect (such as a cgroup connect4 hook) runs once per exchange. The client closes first,
// so the TIME_WAIT states stay on its side.
func tcpConn(args []string) {
	fs := flag.NewFlagSet("tcp-conn", flag.ExitOnError)
	target := fs.String("target", "", "address of a TCP echo server")
	conns := fs.Int("conns", 16, "concurrent workers, each with one connection at a time")
	duration := fs.Duration("duration", 5*time.Second, "how long to run")
	size := fs.Int("size", 64, "bytes per request (echoed back)")
	fs.Parse(args)
	var lat latencies
	var e errs
	var total atomic.Int64
	deadline := time.Now().Add(*duration)
	start := time.Now()
	dialer := net.Dialer{Timeout: 2 * time.Second}
	var wg sync.WaitGroup
	for i := 0; i < *conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := bytes.Repeat([]byte{'x'}, *size)
			resp := make([]byte, *size)
			local := make([]time.Duration, 0, 1<<16)
			// One exchange; the latency runs from before connect to the last byte read.
			once := func() (time.Duration, error) {
				t0 := time.Now()
				c, err := dialer.Dial("tcp", *target)
				if err != nil {
					return 0, err
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(2 * time.Second))
				if _, err := c.Write(req); err != nil {
					return 0, err
				}
				if _, err := io.ReadFull(c, resp); err != nil {
					return 0, err
				}
				return time.Since(t0), nil
			}
			for time.Now().Before(deadline) {
				d, err := once()
				if err != nil {
					e.add(err)
					continue
				}
				local = append(local, d)
			}
			total.Add(int64(len(local)))
			lat.add(local)
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	emit(result{Kind: "tcp-conn", Target: *target, Seconds: secs, Requests: total.Load(),
		Errors: e.n.Load(), PerSecond: float64(total.Load()) / secs,
		P50Ms: lat.quantile(0.5), P99Ms: lat.quantile(0.99), FirstError: e.firstText()})
}

func tcpBulk(args []string) {
	fs := flag.NewFlagSet("tcp-bulk", flag.ExitOnError)
	target := fs.String("target", "", "address of an echo server")
	conns := fs.Int("conns", 1, "concurrent connections")
	duration := fs.Duration("duration", 5*time.Second, "how long to send")
	fs.Parse(args)
	var e errs
	var received atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < *conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", *target)
			if err != nil {
				e.add(err)
				return
			}
			defer c.Close()
			tc := c.(*net.TCPConn)
			done := make(chan int64)
			go func() {
				n, err := io.Copy(io.Discard, c)
				if err != nil {
					e.add(err)
				}
				done <- n
			}()
			chunk := make([]byte, 256*1024)
			deadline := time.Now().Add(*duration)
			for time.Now().Before(deadline) {
				if _, err := c.Write(chunk); err != nil {
					e.add(err)
					break
				}
			}
			// Half-close: the echo server sees EOF, sends what is left and closes.
			tc.CloseWrite()
			received.Add(<-done)
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	emit(result{Kind: "tcp-bulk", Target: *target, Seconds: secs, Errors: e.n.Load(),
		Bytes: received.Load(), MiBPerSec: float64(received.Load()) / secs / (1 << 20),
		FirstError: e.firstText()})
}

func udpRR(args []string) {
	fs := flag.NewFlagSet("udp-rr", flag.ExitOnError)
	target := fs.String("target", "", "address of a UDP echo server")
	clients := fs.Int("clients", 16, "concurrent clients, each from its own port")
	duration := fs.Duration("duration", 5*time.Second, "how long to run")
	size := fs.Int("size", 64, "bytes per datagram")
	unconnected := fs.Bool("unconnected", false,
		"send with sendto and read with recvfrom on unconnected sockets; a reply from any "+
			"address but the target counts as an error")
	fs.Parse(args)
	to, err := netip.ParseAddrPort(*target)
	if err != nil {
		fail("-target %q: %v, expected IP:PORT", *target, err)
	}
	kind := "udp-rr"
	if *unconnected {
		kind = "udp-unconnected"
	}
	var lat latencies
	var e errs
	var total atomic.Int64
	deadline := time.Now().Add(*duration)
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < *clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var c *net.UDPConn
			var err error
			if *unconnected {
				// "udp4", not "udp": Go opens a wildcard "udp" socket as a dual-stack IPv6
				// one, whose datagrams to an IPv4 address would pass the IPv6 hooks.
				c, err = net.ListenUDP(udpNet(to), nil)
			} else {
				c, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(to))
			}
			if err != nil {
				e.add(err)
				return
			}
			defer c.Close()
			req := bytes.Repeat([]byte{'u'}, *size)
			resp := make([]byte, 65536)
			local := make([]time.Duration, 0, 1<<16)
			for time.Now().Before(deadline) {
				t0 := time.Now()
				var err error
				if *unconnected {
					_, err = c.WriteToUDPAddrPort(req, to)
				} else {
					_, err = c.Write(req)
				}
				if err != nil {
					e.add(err)
					continue
				}
				// A lost datagram counts as an error after 200 ms, and the client goes on.
				c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				var n int
				var from netip.AddrPort
				if *unconnected {
					n, from, err = c.ReadFromUDPAddrPort(resp)
				} else {
					n, err = c.Read(resp)
				}
				if err == nil && n != *size {
					err = fmt.Errorf("reply of %d bytes, sent %d", n, *size)
				}
				// The application sent to the target, so its answer must come from there: a
				// datagram showing another source (a backend's address that recvmsg did not
				// rewrite back) is one such an application would drop.
				if err == nil && *unconnected && from != to {
					err = fmt.Errorf("reply from %s, sent to %s", from, to)
				}
				if err != nil {
					e.add(err)
					continue
				}
				local = append(local, time.Since(t0))
			}
			total.Add(int64(len(local)))
			lat.add(local)
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	emit(result{Kind: kind, Target: *target, Seconds: secs, Requests: total.Load(),
		Errors: e.n.Load(), PerSecond: float64(total.Load()) / secs,
		P50Ms: lat.quantile(0.5), P99Ms: lat.quantile(0.99), FirstError: e.firstText()})
}

// udpNet is the network of an unconnected socket that sends to addr: one of addr's family.
func udpNet(addr netip.AddrPort) string {
	if addr.Addr().Is4() {
		return "udp4"
	}
	return "udp6"
}
