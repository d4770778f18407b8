// Package probe checks the health of ports on this machine, and calls mesh
// services by name for hostctl verify.
//
// The agent accepts probe targets over its API, so it must not become a
// way to reach other hosts: only this machine's own addresses are probed,
// checked before any packet is sent and again on every connection the
// dialer makes (a name such as localhost resolves at dial time). A service
// call takes only a Kubernetes service name, which the sidecar routes.
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
	"regexp"
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
	u, err := requestURL(host, port, path)
	if err != nil {
		return Result{Err: err}
	}
	client := &http.Client{
		Transport: &http.Transport{
			Proxy:             nil, // never send a local probe through HTTP_PROXY
			DialContext:       localDialer().DialContext,
			DisableKeepAlives: true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	defer client.CloseIdleConnections()
	r, _ := get(ctx, client, u, orDefault(timeout))
	return r
}

// requestURL is http://host:port/path, path checked to be a path.
func requestURL(host string, port int, path string) (*url.URL, error) {
	if path == "" {
		path = "/"
	}
	u, err := url.ParseRequestURI(path)
	if err != nil || u.Scheme != "" || u.Host != "" {
		return nil, fmt.Errorf("probe path %q: want an absolute path such as /healthz, not a URL", path)
	}
	u.Scheme = "http"
	u.Host = net.JoinHostPort(host, strconv.Itoa(port))
	return u, nil
}

// get sends GET u and judges it like a Kubernetes httpGet probe: 2xx or
// 3xx is OK. It returns the first KiB of the body.
func get(ctx context.Context, client *http.Client, u *url.URL, timeout time.Duration) (Result, string) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return Result{Err: fmt.Errorf("probe %s: %w", u, err)}, ""
	}
	req.Header.Set("User-Agent", "meshvm-probe")
	start := time.Now()
	resp, err := client.Do(req)
	latency := time.Since(start)
	if err != nil {
		return Result{Latency: latency, Err: fmt.Errorf("probe %s: %w", u, plain(err))}, ""
	}
	// Read a little so the server does not see a reset mid-write.
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
	if len(body) > 1<<10 {
		body = body[:1<<10]
	}
	r := Result{StatusCode: resp.StatusCode, Latency: latency}
	r.OK = resp.StatusCode >= 200 && resp.StatusCode < 400
	if !r.OK {
		r.Err = fmt.Errorf("probe %s: got HTTP status %d, want 200-399", u, resp.StatusCode)
	}
	return r, string(body)
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

// ErrNotService refuses a call target that is not a Kubernetes service name.
var ErrNotService = errors.New("only Kubernetes service names are called")

var serviceName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.svc(\.cluster\.local)?)?$`)

// ServiceResult is a call's outcome, with the start of the body.
type ServiceResult struct {
	Result
	Body string
}

// Service sends GET path to a mesh service (name.namespace[.svc[.cluster.local]])
// on port through this machine's resolver and routes: on a VM, the
// sidecar's DNS proxy and capture carry it into the mesh.
func Service(ctx context.Context, host string, port int, path string, timeout time.Duration) ServiceResult {
	if !serviceName.MatchString(host) {
		return ServiceResult{Result: Result{Err: fmt.Errorf("%w: %q: give name.namespace, e.g. helloworld.sample", ErrNotService, host)}}
	}
	if port < 1 || port > 65535 {
		return ServiceResult{Result: Result{Err: fmt.Errorf("%w: got port %d, want 1-65535", ErrBadPort, port)}}
	}
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	u, err := requestURL(host, port, path)
	if err != nil {
		return ServiceResult{Result: Result{Err: err}}
	}
	client := &http.Client{
		Transport:     &http.Transport{Proxy: nil, DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	defer client.CloseIdleConnections()
	r, body := get(ctx, client, u, timeout)
	return ServiceResult{Result: r, Body: body}
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
