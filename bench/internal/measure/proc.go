package measure

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// RSS is a process's resident set (VmRSS) in bytes; pid 0 is this process.
func RSS(pid int) (int64, error) { return status(pid, "VmRSS") }

// PeakRSS is the largest resident set the process has had (VmHWM).
func PeakRSS(pid int) (int64, error) { return status(pid, "VmHWM") }

// status is a size field of /proc/pid/status in bytes.
func status(pid int, field string) (int64, error) {
	p := "/proc/self/status"
	if pid > 0 {
		p = fmt.Sprintf("/proc/%d/status", pid)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("%s has no %s", p, field)
}

// CPU is the processor time a process has used (user and system); pid 0 is
// this process. Linux's clock tick is 100 Hz on every architecture Go supports.
func CPU(pid int) (time.Duration, error) {
	p := "/proc/self/stat"
	if pid > 0 {
		p = fmt.Sprintf("/proc/%d/stat", pid)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, err
	}
	// Fields after the command (in parentheses, which may hold spaces).
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("%s: too few fields", p)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("%s: utime %q stime %q", p, f[11], f[12])
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

// Percentile is the p-th percentile (0-100) of ds, nearest rank.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}

// MiB formats bytes in MiB.
func MiB(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// APICounter counts a client's API requests by verb, as a rest.Config's
// WrapTransport sees them (after client-side rate limiting).
type APICounter struct {
	mu    sync.Mutex
	verbs map[string]int
}

// Wrap is a rest.Config.WrapTransport.
func (c *APICounter) Wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		c.add(verb(r))
		return rt.RoundTrip(r)
	})
}

func (c *APICounter) add(v string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.verbs == nil {
		c.verbs = map[string]int{}
	}
	c.verbs[v]++
}

// Snapshot is the counts so far by verb.
func (c *APICounter) Snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int{}
	for k, v := range c.verbs {
		out[k] = v
	}
	return out
}

// Writes counts the requests that change something (create, update, patch, delete).
func Writes(verbs map[string]int) int {
	return verbs["create"] + verbs["update"] + verbs["patch"] + verbs["delete"]
}

// Since is now's counts less before's.
func Since(now, before map[string]int) map[string]int {
	out := map[string]int{}
	for k, v := range now {
		if d := v - before[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}

// verb names a request as the API server's audit log does: get and list
// (a GET naming an object or not), watch, create, update, patch, delete.
func verb(r *http.Request) string {
	switch r.Method {
	case http.MethodPost:
		return "create"
	case http.MethodPut:
		return "update"
	case http.MethodPatch:
		return "patch"
	case http.MethodDelete:
		return "delete"
	}
	if r.URL.Query().Get("watch") == "true" || r.URL.Query().Get("watch") == "1" {
		return "watch"
	}
	// /api/v1/namespaces/NS/KIND/NAME or /apis/G/V/namespaces/NS/KIND/NAME[/status]
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if i := slices.Index(parts, "namespaces"); i >= 0 && len(parts) > i+3 {
		return "get"
	}
	if i := slices.Index(parts, "namespaces"); i >= 0 && len(parts) == i+2 {
		return "get" // the namespace itself
	}
	return "list"
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
