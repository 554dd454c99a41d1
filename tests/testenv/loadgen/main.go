// Command loadgen is the real-node tier's application: a backend that says who answered, and
// a bounded load loop that counts every failed request, connection and datagram while meshd
// is restarted under it.
//
//	loadgen serve [--http :8080] [--tcp :7000] [--udp :7001]
//	loadgen load  [--http URL] [--tcp HOST:PORT] [--udp HOST:PORT] [--for 120s] [--stop FILE]
//	              [--progress FILE] [--pause 20ms]
//
// serve answers HTTP on any path with one line (`pod=… node=… remote=… host=…`), echoes each
// TCP line prefixed with the pod's name, and answers each UDP datagram the same way.
//
// load runs, until --stop names a file that exists or --for has passed:
//
//   - http-keepalive: two workers, each on its own keep-alive connection (Go's client, which
//     retries an idempotent request once when a reused connection turns out closed, as
//     browsers and most HTTP libraries do);
//   - http-new: one worker, a new connection (and name lookup) per request;
//   - tcp: one worker, a new connection per exchange: one line out, its echo back, close;
//   - udp: one worker, a new socket per exchange: one datagram out, its answer back within 5 s
//     (a resolver's timeout: on a loaded 2-core machine an answer can take over 2 s).
//
// Every second it writes the counts to --progress; at the end it prints them as one JSON line.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: loadgen serve|load [flags]")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		serve(os.Args[2:])
	case "load":
		load(os.Args[2:])
	default:
		fmt.Fprintf(os.Stderr, "loadgen: unknown command %q (want serve or load)\n", os.Args[1])
		os.Exit(2)
	}
}

func who() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("pod=%s node=%s", host, os.Getenv("NODE_NAME"))
}

func serve(args []string) {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	httpAddr := fs.String("http", ":8080", "HTTP listen address (empty: none)")
	tcpAddr := fs.String("tcp", ":7000", "TCP echo listen address (empty: none)")
	udpAddr := fs.String("udp", ":7001", "UDP echo listen address (empty: none)")
	_ = fs.Parse(args)
	me := who()
	errs := make(chan error, 3)
	if *httpAddr != "" {
		go func() {
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/plain")
				fmt.Fprintf(w, "%s remote=%s host=%s\n", me, r.RemoteAddr, r.Host)
			})
			errs <- (&http.Server{Addr: *httpAddr, Handler: h, ReadHeaderTimeout: 10 * time.Second}).ListenAndServe()
		}()
	}
	if *tcpAddr != "" {
		l, err := net.Listen("tcp", *tcpAddr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(1)
		}
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					errs <- err
					return
				}
				go func() {
					defer c.Close()
					r := bufio.NewReader(c)
					for {
						line, err := r.ReadString('\n')
						if err != nil {
							return
						}
						if _, err := fmt.Fprintf(c, "%s remote=%s %s", me, c.RemoteAddr(), line); err != nil {
							return
						}
					}
				}()
			}
		}()
	}
	if *udpAddr != "" {
		pc, err := net.ListenPacket("udp", *udpAddr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(1)
		}
		go func() {
			buf := make([]byte, 2048)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					errs <- err
					return
				}
				_, _ = pc.WriteTo([]byte(fmt.Sprintf("%s remote=%s %s", me, from, buf[:n])), from)
			}
		}()
	}
	fmt.Fprintln(os.Stderr, "loadgen: serving")
	err := <-errs
	fmt.Fprintln(os.Stderr, "loadgen:", err)
	os.Exit(1)
}

// counts is one kind of traffic's tally.
type counts struct {
	Sent   int      `json:"sent"`
	Failed int      `json:"failed"`
	Errors []string `json:"errors,omitempty"`
	// Cut: an exchange still unanswered when the run ended, with how long it had waited and
	// what it was doing; it is not counted as sent or failed.
	Cut string `json:"cut,omitempty"`
	// Backends: who answered, and how often.
	Backends map[string]int `json:"backends"`
}

type tally struct {
	mu    sync.Mutex
	kinds map[string]*counts
}

func (t *tally) add(kind string, answer string, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.kinds[kind]
	c.Sent++
	if err != nil {
		c.Failed++
		if len(c.Errors) < 10 {
			c.Errors = append(c.Errors, fmt.Sprintf("%s: %v", time.Now().UTC().Format("15:04:05.000"), err))
		}
		return
	}
	c.Backends[strings.Fields(answer + " ?")[0]]++
}

func (t *tally) cut(kind string, what string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.kinds[kind].Cut = what
}

func (t *tally) json() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	b, _ := json.Marshal(t.kinds)
	return b
}

func load(args []string) {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	httpURL := fs.String("http", "", "URL to GET (keep-alive and new-connection workers)")
	tcpAddr := fs.String("tcp", "", "TCP echo address")
	udpAddr := fs.String("udp", "", "UDP echo address")
	limit := fs.Duration("for", 120*time.Second, "the longest the load runs")
	stop := fs.String("stop", "/tmp/loadgen.stop", "the load ends once this file exists")
	progress := fs.String("progress", "/tmp/loadgen.progress", "counts written here every second")
	pause := fs.Duration("pause", 20*time.Millisecond, "each worker's pause between requests")
	_ = fs.Parse(args)
	_ = os.Remove(*stop)

	t := &tally{kinds: map[string]*counts{}}
	ctx, cancel := context.WithTimeout(context.Background(), *limit)
	defer cancel()
	var wg sync.WaitGroup
	worker := func(kind string, one func() (string, error)) {
		t.kinds[kind] = &counts{Backends: map[string]int{}}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				began := time.Now()
				answer, err := one()
				if ctx.Err() != nil && err != nil {
					// Cut off by the end of the run: not a failure, but said, so that a run
					// whose only exchange hung is not read as a run that sent nothing.
					t.cut(kind, fmt.Sprintf("after %s: %v", time.Since(began).Round(time.Millisecond), err))
					return
				}
				t.add(kind, answer, err)
				time.Sleep(*pause)
			}
		}()
	}
	get := func(client *http.Client) func() (string, error) {
		return func() (string, error) {
			req, _ := http.NewRequestWithContext(ctx, "GET", *httpURL, nil)
			resp, err := client.Do(req)
			if err != nil {
				return "", err
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				return "", err
			}
			if resp.StatusCode != 200 {
				return "", fmt.Errorf("status %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
			}
			return string(body), nil
		}
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	if *httpURL != "" {
		for i := 1; i <= 2; i++ {
			client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
				DialContext: dialer.DialContext, MaxIdleConnsPerHost: 1, MaxConnsPerHost: 1,
			}}
			worker(fmt.Sprintf("http-keepalive-%d", i), get(client))
		}
		worker("http-new", get(&http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			DialContext: dialer.DialContext, DisableKeepAlives: true,
		}}))
	}
	if *tcpAddr != "" {
		seq := 0
		worker("tcp", func() (string, error) {
			seq++
			c, err := dialer.DialContext(ctx, "tcp", *tcpAddr)
			if err != nil {
				return "", err
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			want := fmt.Sprintf("tcp %d", seq)
			if _, err := fmt.Fprintf(c, "%s\n", want); err != nil {
				return "", err
			}
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				return "", fmt.Errorf("reading the echo: %w", err)
			}
			if !strings.HasSuffix(strings.TrimSpace(line), want) {
				return "", fmt.Errorf("echo %q does not end with %q", line, want)
			}
			return line, nil
		})
	}
	if *udpAddr != "" {
		seq := 0
		worker("udp", func() (string, error) {
			seq++
			c, err := dialer.DialContext(ctx, "udp", *udpAddr)
			if err != nil {
				return "", err
			}
			defer c.Close()
			want := fmt.Sprintf("udp %d", seq)
			if _, err := c.Write([]byte(want)); err != nil {
				return "", err
			}
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 2048)
			for {
				n, err := c.Read(buf)
				if err != nil {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						return "", fmt.Errorf("no answer to %q within 5 s", want)
					}
					return "", err
				}
				if strings.HasSuffix(string(buf[:n]), want) {
					return string(buf[:n]), nil
				}
			}
		})
	}
	go func() {
		for ctx.Err() == nil {
			time.Sleep(time.Second)
			_ = os.WriteFile(*progress+".tmp", t.json(), 0o644)
			_ = os.Rename(*progress+".tmp", *progress)
			if _, err := os.Stat(*stop); err == nil {
				cancel()
			}
		}
	}()
	wg.Wait()
	ended := "stop"
	if _, err := os.Stat(*stop); err != nil {
		ended = "limit"
	}
	fmt.Printf("{\"ended\":%q,\"kinds\":%s}\n", ended, t.json())
}
