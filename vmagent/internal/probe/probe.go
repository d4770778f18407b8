// Package probe checks the health of ports on this machine, and calls mesh
// services by name for hostctl verify.
//
// The agent accepts targets over its API, so it must not become a way to
// reach other hosts. A probe reaches loopback only (127.0.0.0/8, ::1; an
// empty host and "localhost" mean 127.0.0.1, never resolved), checked before
// any packet is sent and again on the connection. A service call takes only
// a Kubernetes service name, resolved once as the absolute
// name.namespace.svc.cluster.local. (no search domains), and every address
// it resolves to is checked: loopback, link-local (cloud metadata),
// multicast and unspecified addresses are refused, and the connection goes
// to the checked address itself, so a second resolution cannot swap it.
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
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/meshvm/meshvm/pkg/agentspec"
)

// Errors for targets the package refuses; callers map both to
// InvalidArgument.
var (
	ErrNotLocal = errors.New("only loopback ports are probed")
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
// from the environment is used. host is a loopback address; empty or
// "localhost" means 127.0.0.1. An empty path means "/".
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

// TCP reports OK when a TCP connection to host:port opens. host is as for
// HTTP.
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

// ErrNotService refuses a call target that is not a Kubernetes service name,
// or a name that resolves to where a mesh service cannot be.
var ErrNotService = errors.New("only Kubernetes service names are called")

// ClusterDomain is the DNS domain of the mesh's cluster, as Kubernetes and
// Istio default it.
const ClusterDomain = "cluster.local"

var serviceName = regexp.MustCompile(`^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)\.([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)(\.svc(\.` + regexp.QuoteMeta(ClusterDomain) + `)?)?$`)

// ServiceResult is a call's outcome, with the start of the body.
type ServiceResult struct {
	Result
	Body string
}

// lookup resolves a service's absolute name; tests replace it.
var lookup = func(ctx context.Context, fqdn string) ([]netip.Addr, error) {
	return net.DefaultResolver.LookupNetIP(ctx, "ip", fqdn)
}

// Service sends GET path to a mesh service (name.namespace[.svc[.cluster.local]])
// on port through this machine's resolver and routes: on a VM, the
// sidecar's DNS proxy and capture carry it into the mesh. The request's
// Host is the name as given, which the sidecar routes by.
func Service(ctx context.Context, host string, port int, path string, timeout time.Duration) ServiceResult {
	refuse := func(err error) ServiceResult { return ServiceResult{Result: Result{Err: err}} }
	m := serviceName.FindStringSubmatch(host)
	if m == nil {
		return refuse(fmt.Errorf("%w: %q: give name.namespace, e.g. helloworld.sample (optionally .svc or .svc.%s)", ErrNotService, host, ClusterDomain))
	}
	if port < 1 || port > 65535 {
		return refuse(fmt.Errorf("%w: got port %d, want 1-65535", ErrBadPort, port))
	}
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	u, err := requestURL(host, port, path)
	if err != nil {
		return refuse(err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// Absolute, so no search domain of resolv.conf turns it into another host.
	fqdn := m[1] + "." + m[3] + ".svc." + ClusterDomain + "."
	addrs, err := lookup(ctx, fqdn)
	if err != nil {
		return refuse(fmt.Errorf("resolve %s: %w: on a VM the sidecar's DNS proxy answers for mesh services (ISTIO_META_DNS_CAPTURE)", fqdn, plain(err)))
	}
	own := ownAddrs()
	for i, a := range addrs {
		a = a.Unmap()
		addrs[i] = a
		if why := unreachable(a, own); why != "" {
			return refuse(fmt.Errorf("%w: %s resolves to %s, %s, where no mesh service is: check /etc/hosts and the VM's DNS", ErrNotService, host, a, why))
		}
	}
	client := &http.Client{
		Transport:     &http.Transport{Proxy: nil, DisableKeepAlives: true, DialContext: pinnedDialer(addrs, port)},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	defer client.CloseIdleConnections()
	r, body := get(ctx, client, u, timeout)
	return ServiceResult{Result: r, Body: body}
}

// unreachable says why a mesh service cannot be at a, or "" when it can:
// not this machine (own holds its addresses), not a cloud's metadata
// endpoint, not the shared range 100.64.0.0/10 such endpoints sit in.
func unreachable(a netip.Addr, own []netip.Addr) string {
	a = a.Unmap()
	switch {
	case a.IsLoopback():
		return "a loopback address"
	case slices.Contains(own, a.WithZone("")):
		return "this VM's own address"
	case agentspec.MetadataAddress(a) && !a.IsLinkLocalUnicast(): // link-local is named below
		return "a cloud metadata address"
	case sharedRange.Contains(a):
		return "in the shared range 100.64.0.0/10 (cloud metadata and carrier NAT)"
	case a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast():
		return "a link-local address"
	case a.IsUnspecified():
		return "the unspecified address"
	case a.IsMulticast(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "a multicast or broadcast address"
	}
	return ""
}

var sharedRange = netip.MustParsePrefix("100.64.0.0/10")

// ownAddrs lists this machine's interface addresses, zones dropped (a
// variable for the test, whose "remote" service sits on its own loopback).
var ownAddrs = func() []netip.Addr {
	ifAddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var own []netip.Addr
	for _, ia := range ifAddrs {
		if p, err := netip.ParsePrefix(ia.String()); err == nil {
			own = append(own, p.Addr().Unmap().WithZone(""))
		}
	}
	return own
}

// pinnedDialer connects to the checked addresses, in order, whatever
// address the HTTP client asks for: the name is never resolved again.
func pinnedDialer(addrs []netip.Addr, port int) func(context.Context, string, string) (net.Conn, error) {
	d := &net.Dialer{Control: func(_, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil || unreachable(ap.Addr(), nil) != "" || !slices.Contains(addrs, ap.Addr()) {
			return fmt.Errorf("%w: refusing to dial %s", ErrNotService, address)
		}
		return nil
	}}
	return func(ctx context.Context, network, _ string) (net.Conn, error) {
		var firstErr error
		for _, a := range addrs {
			conn, err := d.DialContext(ctx, network, netip.AddrPortFrom(a, uint16(port)).String())
			if err == nil {
				return conn, nil
			}
			if firstErr == nil {
				firstErr = err
			}
		}
		if firstErr == nil {
			firstErr = errors.New("no address to dial")
		}
		return nil, firstErr
	}
}

// checkTarget validates host and port and returns the loopback address to
// dial.
func checkTarget(host string, port int) (string, error) {
	if port < 1 || port > 65535 {
		return "", fmt.Errorf("%w: got port %d, want 1-65535", ErrBadPort, port)
	}
	if host == "" || host == "localhost" {
		return "127.0.0.1", nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return "", fmt.Errorf("%w: %q is not localhost or a loopback address: probe 127.0.0.1 (the app's port on this VM)", ErrNotLocal, host)
	}
	if !ip.Unmap().IsLoopback() {
		return "", fmt.Errorf("%w: %s is not a loopback address: probe 127.0.0.1 or ::1 (the app's port on this VM)", ErrNotLocal, ip)
	}
	return ip.Unmap().String(), nil
}

// localDialer refuses, at connect time, any address that is not loopback.
func localDialer() *net.Dialer {
	return &net.Dialer{
		Control: func(_, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("%w: cannot check dial address %q", ErrNotLocal, address)
			}
			if !ap.Addr().Unmap().IsLoopback() {
				return fmt.Errorf("%w: %s is not a loopback address", ErrNotLocal, ap.Addr())
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
