// Package probe checks the health of ports on this machine.
//
// The agent accepts probe targets over its API, so it must not become a
// way to reach other hosts: only this machine's own addresses are probed,
// checked before any packet is sent and again on every connection the
// dialer makes (a name such as localhost resolves at dial time).
package probe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"syscall"
	"time"
)

// Errors for targets the package refuses; callers map both to
// InvalidArgument.
var (
	ErrNotLocal = errors.New("only local ports are probed")
	ErrBadPort  = errors.New("port out of range")
)

// DefaultTimeout is used when a probe is given none; it matches Kubernetes'
// default probe timeoutSeconds.
const DefaultTimeout = time.Second

// Result is the outcome of one probe. Err says why OK is false; StatusCode
// is set only when an HTTP response arrived.
type Result struct {
	OK         bool
	StatusCode int
	Latency    time.Duration
	Err        error
}

// HTTP sends GET path to host:port and reports OK for a 2xx or 3xx status,
// like a Kubernetes httpGet probe. Redirects are not followed, and no proxy
// from the environment is used. An empty host means 127.0.0.1 and an empty
// path "/".
func HTTP(ctx context.Context, host string, port int, path string, timeout time.Duration) Result {
	host, err := checkTarget(host, port)
	if err != nil {
		return Result{Err: err}
	}
	if path == "" {
		path = "/"
	}
	u, err := url.ParseRequestURI(path)
	if err != nil || u.Scheme != "" || u.Host != "" {
		return Result{Err: fmt.Errorf("probe path %q: want an absolute path such as /healthz, not a URL", path)}
	}
	u.Scheme = "http"
	u.Host = net.JoinHostPort(host, strconv.Itoa(port))

	ctx, cancel := context.WithTimeout(ctx, orDefault(timeout))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return Result{Err: fmt.Errorf("probe %s: %w", u, err)}
	}
	req.Header.Set("User-Agent", "meshvm-probe")
	client := &http.Client{
		Transport: &http.Transport{
			Proxy:             nil, // never send a local probe through HTTP_PROXY
			DialContext:       localDialer().DialContext,
			DisableKeepAlives: true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	defer client.CloseIdleConnections()

	start := time.Now()
	resp, err := client.Do(req)
	latency := time.Since(start)
	if err != nil {
		return Result{Latency: latency, Err: fmt.Errorf("probe %s: %w", u, plain(err))}
	}
	// Read a little so the server does not see a reset mid-write.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()

	r := Result{StatusCode: resp.StatusCode, Latency: latency}
	r.OK = resp.StatusCode >= 200 && resp.StatusCode < 400
	if !r.OK {
		r.Err = fmt.Errorf("probe %s: got HTTP status %d, want 200-399", u, resp.StatusCode)
	}
	return r
}

// TCP reports OK when a TCP connection to host:port opens. An empty host
// means 127.0.0.1.
func TCP(ctx context.Context, host string, port int, timeout time.Duration) Result {
	host, err := checkTarget(host, port)
	if err != nil {
		return Result{Err: err}
	}
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	ctx, cancel := context.WithTimeout(ctx, orDefault(timeout))
	defer cancel()

	start := time.Now()
	conn, err := localDialer().DialContext(ctx, "tcp", addr)
	latency := time.Since(start)
	if err != nil {
		return Result{Latency: latency, Err: fmt.Errorf("probe tcp %s: %w", addr, plain(err))}
	}
	conn.Close()
	return Result{OK: true, Latency: latency}
}

// checkTarget validates host and port and returns the host to dial.
func checkTarget(host string, port int) (string, error) {
	if port < 1 || port > 65535 {
		return "", fmt.Errorf("%w: got port %d, want 1-65535", ErrBadPort, port)
	}
	switch host {
	case "":
		return "127.0.0.1", nil
	case "localhost":
		return host, nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return "", fmt.Errorf("%w: %q is not localhost or an IP address of this machine: probe a local address instead", ErrNotLocal, host)
	}
	if !isLocal(ip) {
		return "", fmt.Errorf("%w: %s is not an address of this machine: probe 127.0.0.1 or one of its interface addresses instead", ErrNotLocal, ip)
	}
	return host, nil
}

func isLocal(ip netip.Addr) bool {
	ip = ip.Unmap().WithZone("")
	if ip.IsLoopback() {
		return true
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		if local, ok := netip.AddrFromSlice(n.IP); ok && local.Unmap() == ip {
			return true
		}
	}
	return false
}

// localDialer refuses, at connect time, any address that is not local.
func localDialer() *net.Dialer {
	return &net.Dialer{
		Control: func(_, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("%w: cannot check dial address %q", ErrNotLocal, address)
			}
			if !isLocal(ap.Addr()) {
				return fmt.Errorf("%w: %s is not an address of this machine", ErrNotLocal, ap.Addr())
			}
			return nil
		},
	}
}

func orDefault(timeout time.Duration) time.Duration {
	if timeout <= 0 {
		return DefaultTimeout
	}
	return timeout
}

// plain drops the "Get \"http://...\":" and "dial tcp 127.0.0.1:80:"
// prefixes of *url.Error and *net.OpError; the caller already names the
// target.
func plain(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		err = oe.Err
	}
	return err
}
