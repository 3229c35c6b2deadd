// loadgen drives HTTP requests at a fixed concurrency for a fixed time and reports every latency as JSON.
//
// `streamcart bench api` uses it so that the load generator is not the bottleneck: a Python client on the same
// 2-core machine spends more CPU per request than the server it measures. Requests are read from stdin, one JSON
// object per line ({"method", "url", "headers", "body"}); client n sends requests n, n+c, n+2c, ... round-robin.
// The report on stdout: {"elapsed_s", "statuses": {"200": n}, "errors": n, "latencies_ms": [...]}.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"
)

type request struct {
	Method  string            `json:"method"`
	URL     string            `json:"url"`
	Headers map[string]string `json:"headers"`
	Body    string            `json:"body"`
}

type report struct {
	ElapsedS    float64        `json:"elapsed_s"`
	Statuses    map[string]int `json:"statuses"`
	Errors      int            `json:"errors"`
	FirstError  string         `json:"first_error,omitempty"`
	LatenciesMs []float64      `json:"latencies_ms"`
}

func main() {
	concurrency := flag.Int("c", 8, "requests in flight at once")
	duration := flag.Duration("d", 10*time.Second, "how long to send")
	flag.Parse()

	var requests []request
	scanner := bufio.NewScanner(os.Stdin)
	scanner.Buffer(make([]byte, 1<<20), 1<<20)
	for scanner.Scan() {
		if len(bytes.TrimSpace(scanner.Bytes())) == 0 {
			continue
		}
		var r request
		if err := json.Unmarshal(scanner.Bytes(), &r); err != nil {
			fail("a request line is not JSON: %v", err)
		}
		requests = append(requests, r)
	}
	if len(requests) == 0 {
		fail("no requests on stdin")
	}

	client := &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: *concurrency * 2, MaxConnsPerHost: *concurrency * 2},
	}
	type result struct {
		statuses  map[int]int
		errors    int
		firstErr  string
		latencies []float64
	}
	results := make([]result, *concurrency)
	started := time.Now()
	stopAt := started.Add(*duration)
	var wg sync.WaitGroup
	for n := 0; n < *concurrency; n++ {
		wg.Add(1)
		go func(n int) {
			defer wg.Done()
			mine := result{statuses: map[int]int{}}
			for i := n; time.Now().Before(stopAt); i += *concurrency {
				r := requests[i%len(requests)]
				var body io.Reader
				if r.Body != "" {
					body = bytes.NewBufferString(r.Body)
				}
				req, err := http.NewRequest(r.Method, r.URL, body)
				if err != nil {
					fail("bad request %q: %v", r.URL, err)
				}
				for k, v := range r.Headers {
					req.Header.Set(k, v)
				}
				began := time.Now()
				resp, err := client.Do(req)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				if err != nil {
					mine.errors++
					if mine.firstErr == "" {
						mine.firstErr = err.Error()
					}
					continue
				}
				mine.statuses[resp.StatusCode]++
				mine.latencies = append(mine.latencies, float64(time.Since(began).Microseconds())/1000)
			}
			results[n] = mine
		}(n)
	}
	wg.Wait()

	out := report{ElapsedS: time.Since(started).Seconds(), Statuses: map[string]int{}, LatenciesMs: []float64{}}
	for _, r := range results {
		for status, count := range r.statuses {
			out.Statuses[strconv.Itoa(status)] += count
		}
		out.Errors += r.errors
		if out.FirstError == "" {
			out.FirstError = r.firstErr
		}
		out.LatenciesMs = append(out.LatenciesMs, r.latencies...)
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail("writing the report: %v", err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "loadgen: "+format+"\n", args...)
	os.Exit(2)
}
