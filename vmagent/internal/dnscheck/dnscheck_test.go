package dnscheck

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/net/dns/dnsmessage"
)

// dnsServer is a real DNS server on UDP and TCP at the same loopback port.
type dnsServer struct {
	addr     string
	servfail atomic.Bool // answer every question with SERVFAIL

	mu    sync.Mutex
	asked []string // question names, as received
}

// Zone data. Names not listed get NXDOMAIN.
var (
	zone = map[string][]netip.Addr{
		"istiod.istio-system.svc.":  {netip.MustParseAddr("10.0.0.7")},
		"dual.example.":             {netip.MustParseAddr("10.0.0.8"), netip.MustParseAddr("fd00::8")},
		"empty.example.":            nil, // exists, no address records
		"big.example.":              {netip.MustParseAddr("10.0.0.9")},
		"target.example.":           {netip.MustParseAddr("10.0.0.10")},
		"istiod.svc.cluster.local.": {netip.MustParseAddr("10.0.0.11")},
	}
	cnames = map[string]string{"alias.example.": "target.example."}
)

// startDNS starts a server on ip at port (0 picks one free for both UDP
// and TCP).
func startDNS(t *testing.T, ip string, port int) *dnsServer {
	t.Helper()
	s := &dnsServer{}
	var (
		pc net.PacketConn
		l  net.Listener
	)
	for try := 0; ; try++ {
		var err error
		pc, err = net.ListenPacket("udp", net.JoinHostPort(ip, strconv.Itoa(port)))
		if err != nil {
			t.Fatalf("listen udp on %s: %v", ip, err)
		}
		l, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		if port != 0 || try == 10 {
			t.Fatalf("listen tcp on %s: %v", pc.LocalAddr(), err)
		}
	}
	s.addr = pc.LocalAddr().String()
	t.Cleanup(func() { pc.Close(); l.Close() })

	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if resp := s.answer(buf[:n], false); resp != nil {
				pc.WriteTo(resp, from)
			}
		}
	}()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var size [2]byte
				if _, err := io.ReadFull(c, size[:]); err != nil {
					return
				}
				req := make([]byte, binary.BigEndian.Uint16(size[:]))
				if _, err := io.ReadFull(c, req); err != nil {
					return
				}
				resp := s.answer(req, true)
				c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(resp))), resp...))
			}()
		}
	}()
	return s
}

func (s *dnsServer) port(t *testing.T) int {
	_, p, _ := net.SplitHostPort(s.addr)
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (s *dnsServer) questions() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.asked...)
}

func (s *dnsServer) answer(req []byte, tcp bool) []byte {
	var q dnsmessage.Message
	if err := q.Unpack(req); err != nil || len(q.Questions) != 1 {
		return nil
	}
	question := q.Questions[0]
	name := strings.ToLower(question.Name.String())
	s.mu.Lock()
	s.asked = append(s.asked, question.Name.String())
	s.mu.Unlock()

	resp := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: q.ID, Response: true, RecursionDesired: q.RecursionDesired, RecursionAvailable: true},
		Questions: q.Questions,
	}
	rr := func(name string, body dnsmessage.ResourceBody) dnsmessage.Resource {
		return dnsmessage.Resource{
			Header: dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName(name), Class: dnsmessage.ClassINET, TTL: 30},
			Body:   body,
		}
	}
	switch {
	case s.servfail.Load():
		resp.RCode = dnsmessage.RCodeServerFailure
	case name == "big.example." && !tcp:
		resp.Truncated = true // "too big for UDP": the client must retry over TCP
	default:
		if target, ok := cnames[name]; ok {
			resp.Answers = append(resp.Answers, rr(question.Name.String(), &dnsmessage.CNAMEResource{CNAME: dnsmessage.MustNewName(target)}))
			name = target
		}
		addrs, ok := zone[name]
		if !ok {
			resp.RCode = dnsmessage.RCodeNameError
		}
		for _, a := range addrs {
			switch {
			case a.Is4() && question.Type == dnsmessage.TypeA:
				resp.Answers = append(resp.Answers, rr(name, &dnsmessage.AResource{A: a.As4()}))
			case a.Is6() && question.Type == dnsmessage.TypeAAAA:
				resp.Answers = append(resp.Answers, rr(name, &dnsmessage.AAAAResource{AAAA: a.As16()}))
			}
		}
	}
	out, err := resp.Pack()
	if err != nil {
		panic(err)
	}
	return out
}

// silentDNS binds a UDP port that never answers.
func silentDNS(t *testing.T, ip string, port int) {
	t.Helper()
	pc, err := net.ListenPacket("udp", net.JoinHostPort(ip, strconv.Itoa(port)))
	if err != nil {
		t.Skipf("cannot bind %s (loopback addresses other than 127.0.0.1 need Linux): %v", ip, err)
	}
	t.Cleanup(func() { pc.Close() })
}

// machine writes hosts and resolv.conf into a temporary root.
func machine(t *testing.T, hosts, resolvConf string, port int) Resolver {
	t.Helper()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{"hosts": hosts, "resolv.conf": resolvConf} {
		if err := os.WriteFile(filepath.Join(root, "etc", name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r := DefaultResolver(root)
	r.NameserverPort = port
	return r
}

const hosts = `127.0.0.1 localhost
::1 localhost ip6-localhost
10.9.9.9 Pinned.Example # comment
fd00::9 pinned.example
# 10.1.1.1 commented.example
`

func TestResolveSystem(t *testing.T) {
	srv := startDNS(t, "127.0.0.1", 0)
	r := machine(t, hosts, "# systemd-resolved style\nsearch svc.cluster.local\noptions ndots:5\nnameserver 127.0.0.1\n", srv.port(t))

	tests := []struct {
		name       string
		query      string
		want       []string
		wantServer string
		wantErr    string
		wantIs     error
	}{
		{name: "hosts file, case-insensitive", query: "pinned.example", want: []string{"10.9.9.9", "fd00::9"}, wantServer: r.HostsPath},
		{name: "hosts file, trailing dot", query: "localhost.", want: []string{"127.0.0.1", "::1"}, wantServer: r.HostsPath},
		{name: "commented hosts line ignored", query: "commented.example", wantServer: srv.addr, wantIs: ErrNotFound},
		{name: "nameserver A", query: "istiod.istio-system.svc", want: []string{"10.0.0.7"}, wantServer: srv.addr},
		{name: "nameserver A and AAAA", query: "dual.example", want: []string{"10.0.0.8", "fd00::8"}, wantServer: srv.addr},
		{name: "cname followed", query: "alias.example", want: []string{"10.0.0.10"}, wantServer: srv.addr},
		{name: "truncated answer retried over tcp", query: "big.example", want: []string{"10.0.0.9"}, wantServer: srv.addr},
		{name: "nxdomain", query: "nope.example", wantServer: srv.addr, wantErr: "nope.example: no such host (NXDOMAIN from " + srv.addr + ")", wantIs: ErrNotFound},
		{name: "no address records", query: "empty.example", wantServer: srv.addr, wantErr: "has no A or AAAA records", wantIs: ErrNotFound},
		// The search list is not applied: istiod.svc.cluster.local exists,
		// but the check asks for exactly "istiod".
		{name: "short name is not searched", query: "istiod", wantServer: srv.addr, wantIs: ErrNotFound},
		{name: "empty name", query: "", wantErr: "is not a DNS name"},
		{name: "empty label", query: "a..example", wantErr: "is not a DNS name"},
		{name: "label too long", query: strings.Repeat("a", 64) + ".example", wantErr: "is not a DNS name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := r.Resolve(context.Background(), tt.query, ViaSystem, time.Second)
			if diff := cmp.Diff(tt.want, res.Addresses); diff != "" {
				t.Errorf("addresses (-want +got):\n%s", diff)
			}
			if res.Server != tt.wantServer {
				t.Errorf("got server %q, want %q", res.Server, tt.wantServer)
			}
			checkErr(t, res.Err, tt.wantErr, tt.wantIs)
		})
	}
	for _, q := range srv.questions() {
		if strings.HasPrefix(q, "istiod.svc") {
			t.Errorf("got question %q, want the search list left alone", q)
		}
	}
}

func checkErr(t *testing.T, err error, wantText string, wantIs error) {
	t.Helper()
	if wantText == "" && wantIs == nil {
		if err != nil {
			t.Errorf("got error %v, want nil", err)
		}
		return
	}
	if err == nil {
		t.Errorf("got no error, want one containing %q", wantText)
		return
	}
	if !strings.Contains(err.Error(), wantText) {
		t.Errorf("got error %q, want one containing %q", err, wantText)
	}
	if wantIs != nil && !errors.Is(err, wantIs) {
		t.Errorf("got error %v, want one wrapping %v", err, wantIs)
	}
}

// When a nameserver fails, the next one in resolv.conf is asked and
// credited. All servers share a port, so they live on different loopback
// addresses.
func TestResolveNextNameserver(t *testing.T) {
	good := startDNS(t, "127.0.0.1", 0)
	port := good.port(t)
	tests := []struct {
		name  string
		first string
		setup func(t *testing.T)
	}{
		{name: "first never answers", first: "127.0.0.2", setup: func(t *testing.T) { silentDNS(t, "127.0.0.2", port) }},
		{name: "first answers SERVFAIL", first: "127.0.0.3", setup: func(t *testing.T) {
			silentDNS(t, "127.0.0.3", 0) // skips where 127.0.0.3 is not on lo
			bad := startDNS(t, "127.0.0.3", port)
			bad.servfail.Store(true)
		}},
		{name: "first port closed", first: "127.0.0.4", setup: func(t *testing.T) { silentDNS(t, "127.0.0.4", 0) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.setup(t)
			r := machine(t, "", "nameserver "+tt.first+"\nnameserver 127.0.0.1\n", port)
			res := r.Resolve(context.Background(), "istiod.istio-system.svc", ViaSystem, 200*time.Millisecond)
			if res.Err != nil {
				t.Fatalf("got error %v, want nil", res.Err)
			}
			if res.Server != good.addr {
				t.Errorf("got server %q, want %q", res.Server, good.addr)
			}
			if diff := cmp.Diff([]string{"10.0.0.7"}, res.Addresses); diff != "" {
				t.Errorf("addresses (-want +got):\n%s", diff)
			}
		})
	}
}

func TestResolveSystemFailures(t *testing.T) {
	silentPort := func(t *testing.T) int {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		return pc.LocalAddr().(*net.UDPAddr).Port
	}
	tests := []struct {
		name       string
		resolvConf *string // nil: no file
		port       func(t *testing.T) int
		wantErr    string
		wantIs     error
	}{
		{name: "no nameserver", resolvConf: ptr("search example\noptions ndots:2\n"), wantErr: "no nameserver in "},
		{name: "only unparsable nameservers", resolvConf: ptr("nameserver dns.example\n"), wantErr: "no nameserver in "},
		{name: "no resolv.conf", wantIs: fs.ErrNotExist, wantErr: "read resolver configuration"},
		{name: "nameserver times out", resolvConf: ptr("nameserver 127.0.0.1\n"), port: silentPort, wantErr: "answered for istiod.istio-system.svc: ask 127.0.0.1:", wantIs: context.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			port := 0
			if tt.port != nil {
				port = tt.port(t)
			}
			r := machine(t, "", "", port)
			if tt.resolvConf == nil {
				os.Remove(r.ResolvConfPath)
			} else if err := os.WriteFile(r.ResolvConfPath, []byte(*tt.resolvConf), 0o644); err != nil {
				t.Fatal(err)
			}
			res := r.Resolve(context.Background(), "istiod.istio-system.svc", ViaSystem, 100*time.Millisecond)
			checkErr(t, res.Err, tt.wantErr, tt.wantIs)
			if res.Addresses != nil || res.Server != "" {
				t.Errorf("got addresses %q from %q, want none", res.Addresses, res.Server)
			}
		})
	}
}

func ptr(s string) *string { return &s }

func TestResolveIstioProxy(t *testing.T) {
	proxy := startDNS(t, "127.0.0.1", 0)
	closed, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.LocalAddr().String()
	closed.Close()

	tests := []struct {
		name       string
		proxyAddr  string
		query      string
		want       []string
		wantServer string
		wantErr    string
		wantIs     error
	}{
		// The hosts file says 10.9.9.9: the proxy must be asked anyway.
		{name: "answered by the proxy, not the hosts file", proxyAddr: proxy.addr, query: "pinned.example", wantServer: proxy.addr, wantIs: ErrNotFound},
		{name: "mesh name", proxyAddr: proxy.addr, query: "istiod.istio-system.svc", want: []string{"10.0.0.7"}, wantServer: proxy.addr},
		{name: "proxy not listening", proxyAddr: closedAddr, query: "istiod.istio-system.svc", wantServer: closedAddr, wantErr: "ISTIO_META_DNS_CAPTURE=true"},
		{name: "no proxy address", query: "istiod.istio-system.svc", wantErr: "no Istio DNS proxy address configured"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := machine(t, hosts, "nameserver 127.0.0.1\n", 1)
			r.IstioProxyAddr = tt.proxyAddr
			res := r.Resolve(context.Background(), tt.query, ViaIstioProxy, time.Second)
			if diff := cmp.Diff(tt.want, res.Addresses); diff != "" {
				t.Errorf("addresses (-want +got):\n%s", diff)
			}
			if res.Server != tt.wantServer {
				t.Errorf("got server %q, want %q", res.Server, tt.wantServer)
			}
			checkErr(t, res.Err, tt.wantErr, tt.wantIs)
		})
	}
}

func TestResolveCancelled(t *testing.T) {
	r := machine(t, "", "nameserver 127.0.0.1\n", 0)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	r.NameserverPort = pc.LocalAddr().(*net.UDPAddr).Port
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	res := r.Resolve(ctx, "istiod.istio-system.svc", ViaSystem, time.Hour)
	if !errors.Is(res.Err, context.Canceled) {
		t.Errorf("got error %v, want one wrapping context.Canceled", res.Err)
	}
}

func TestDefaultResolver(t *testing.T) {
	tests := []struct {
		name, root, wantHosts, wantResolv string
	}{
		{"machine root", "/", "/etc/hosts", "/etc/resolv.conf"},
		{"empty root", "", "/etc/hosts", "/etc/resolv.conf"},
		{"image root", "/srv/vm1", "/srv/vm1/etc/hosts", "/srv/vm1/etc/resolv.conf"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := DefaultResolver(tt.root)
			got := []string{r.HostsPath, r.ResolvConfPath, r.IstioProxyAddr}
			want := []string{tt.wantHosts, tt.wantResolv, "127.0.0.1:15053"}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestViaString(t *testing.T) {
	tests := []struct {
		name string
		via  Via
		want string
	}{
		{"system", ViaSystem, "system"},
		{"proxy", ViaIstioProxy, "istio-proxy"},
		{"unknown", Via(7), "Via(7)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.via.String(); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}
