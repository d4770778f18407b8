package probe

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// portOf returns the port a test listener got.
func portOf(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// closedPort returns a loopback port nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := portOf(t, l.Addr().String())
	l.Close()
	return port
}

// silentListener accepts TCP connections in the kernel but never answers.
func silentListener(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return portOf(t, l.Addr().String())
}

func TestHTTP(t *testing.T) {
	var redirectFollowed atomic.Bool
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("/missing", http.NotFound)
	mux.HandleFunc("/unavailable", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "draining", http.StatusServiceUnavailable)
	})
	mux.HandleFunc("/moved", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/target", http.StatusFound)
	})
	mux.HandleFunc("/target", func(w http.ResponseWriter, r *http.Request) { redirectFollowed.Store(true) })
	mux.HandleFunc("/query", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("ready") != "1" {
			w.WriteHeader(http.StatusBadRequest)
		}
	})
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, r *http.Request) {})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	port := portOf(t, srv.Listener.Addr().String())

	tests := []struct {
		name       string
		host       string
		port       int
		path       string
		timeout    time.Duration
		wantOK     bool
		wantStatus int
		wantErr    string
	}{
		{name: "200", path: "/healthz", port: port, wantOK: true, wantStatus: 200},
		{name: "default path", port: port, wantOK: true, wantStatus: 200},
		{name: "explicit loopback host", host: "127.0.0.1", path: "/healthz", port: port, wantOK: true, wantStatus: 200},
		{name: "query string kept", path: "/query?ready=1", port: port, wantOK: true, wantStatus: 200},
		{name: "404", path: "/missing", port: port, wantStatus: 404, wantErr: "got HTTP status 404, want 200-399"},
		{name: "503", path: "/unavailable", port: port, wantStatus: 503, wantErr: "got HTTP status 503"},
		{name: "redirect reported, not followed", path: "/moved", port: port, wantOK: true, wantStatus: 302},
		{name: "closed port", port: closedPort(t), wantErr: "connection refused"},
		{name: "never answers", port: silentListener(t), timeout: 50 * time.Millisecond, wantErr: "context deadline exceeded"},
		{name: "url instead of path", path: "http://example.com/", port: port, wantErr: "not a URL"},
		{name: "relative path", path: "healthz", port: port, wantErr: "not a URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := HTTP(context.Background(), tt.host, tt.port, tt.path, tt.timeout)
			if r.OK != tt.wantOK || r.StatusCode != tt.wantStatus {
				t.Errorf("got OK=%v status=%d, want OK=%v status=%d (err %v)", r.OK, r.StatusCode, tt.wantOK, tt.wantStatus, r.Err)
			}
			if tt.wantErr == "" && r.Err != nil {
				t.Errorf("got error %v, want nil", r.Err)
			}
			if tt.wantErr != "" && (r.Err == nil || !strings.Contains(r.Err.Error(), tt.wantErr)) {
				t.Errorf("got error %v, want one containing %q", r.Err, tt.wantErr)
			}
		})
	}
	if redirectFollowed.Load() {
		t.Errorf("got the redirect target requested, want redirects not followed")
	}
}

func TestHTTPTimeoutIsDeadline(t *testing.T) {
	r := HTTP(context.Background(), "", silentListener(t), "/", 50*time.Millisecond)
	if !errors.Is(r.Err, context.DeadlineExceeded) {
		t.Errorf("got error %v, want one wrapping context.DeadlineExceeded", r.Err)
	}
}

func TestTCP(t *testing.T) {
	tests := []struct {
		name    string
		host    string
		port    int
		wantOK  bool
		wantErr string
	}{
		// The kernel completes the handshake even if the program never
		// accepts: the port is open.
		{name: "listening", port: silentListener(t), wantOK: true},
		{name: "localhost", host: "localhost", port: silentListener(t), wantOK: true},
		{name: "closed port", port: closedPort(t), wantErr: "connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := TCP(context.Background(), tt.host, tt.port, time.Second)
			if r.OK != tt.wantOK {
				t.Errorf("got OK=%v, want %v (err %v)", r.OK, tt.wantOK, r.Err)
			}
			if tt.wantErr == "" && r.Err != nil {
				t.Errorf("got error %v, want nil", r.Err)
			}
			if tt.wantErr != "" && (r.Err == nil || !strings.Contains(r.Err.Error(), tt.wantErr)) {
				t.Errorf("got error %v, want one containing %q", r.Err, tt.wantErr)
			}
		})
	}
}

// An address of one of this machine's interfaces other than loopback is not
// probed: a probe stays on loopback.
func TestTCPInterfaceAddressRefused(t *testing.T) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var ip netip.Addr
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if cand, ok := netip.AddrFromSlice(n.IP); ok && cand.Unmap().Is4() && !cand.IsLoopback() {
				ip = cand.Unmap()
				break
			}
		}
	}
	if !ip.IsValid() {
		t.Skip("no non-loopback IPv4 interface address on this machine")
	}
	l, err := net.Listen("tcp", net.JoinHostPort(ip.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if r := TCP(context.Background(), ip.String(), portOf(t, l.Addr().String()), time.Second); !errors.Is(r.Err, ErrNotLocal) || r.OK {
		t.Errorf("got OK=%v err %v, want ErrNotLocal for %s", r.OK, r.Err, ip)
	}
}

func TestRefusedTargets(t *testing.T) {
	tests := []struct {
		name    string
		host    string
		port    int
		wantErr error
	}{
		{name: "documentation address", host: "192.0.2.1", port: 80, wantErr: ErrNotLocal},
		{name: "public ipv6", host: "2001:db8::1", port: 80, wantErr: ErrNotLocal},
		{name: "host name", host: "example.com", port: 80, wantErr: ErrNotLocal},
		{name: "unspecified", host: "0.0.0.0", port: 80, wantErr: ErrNotLocal},
		{name: "link-local", host: "169.254.169.254", port: 80, wantErr: ErrNotLocal},
		{name: "private", host: "10.0.0.1", port: 80, wantErr: ErrNotLocal},
		{name: "port zero", port: 0, wantErr: ErrBadPort},
		{name: "port too big", port: 65536, wantErr: ErrBadPort},
		{name: "negative port", port: -1, wantErr: ErrBadPort},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A cancelled context: a refusal must come from validation, not
			// from a dial that gave up.
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			for _, r := range []Result{
				HTTP(ctx, tt.host, tt.port, "/", time.Second),
				TCP(ctx, tt.host, tt.port, time.Second),
			} {
				if !errors.Is(r.Err, tt.wantErr) {
					t.Errorf("got error %v, want %v", r.Err, tt.wantErr)
				}
				if r.OK || r.Latency != 0 {
					t.Errorf("got OK=%v latency=%v, want a refusal before any dial", r.OK, r.Latency)
				}
			}
		})
	}
}

// The dialer checks each address again, so a name that resolves elsewhere
// cannot slip past.
func TestDialerRefusesRemoteAddress(t *testing.T) {
	_, err := localDialer().DialContext(context.Background(), "tcp", "192.0.2.1:80")
	if !errors.Is(err, ErrNotLocal) {
		t.Errorf("got error %v, want %v", err, ErrNotLocal)
	}
}
