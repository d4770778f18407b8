//go:build linux

package vmctl

import (
	"context"
	"crypto/tls"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/meshvm/meshvm/pkg/agentspec"
	"github.com/meshvm/meshvm/pkg/host/agentwatch"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
	"github.com/meshvm/meshvm/pkg/mtls"
	"github.com/meshvm/meshvm/vmagent/agentsim"
	"github.com/meshvm/meshvm/vmagent/agenttest"
)

// freeLoopback is a 127.x.y.z address with the agent's port free.
func freeLoopback(t *testing.T) string {
	t.Helper()
	for range 20 {
		ip := fmt.Sprintf("127.%d.%d.%d", 100+rand.IntN(100), rand.IntN(250), 1+rand.IntN(250))
		lis, err := net.Listen("tcp", net.JoinHostPort(ip, fmt.Sprint(agentspec.Port)))
		if err == nil {
			lis.Close()
			return ip
		}
	}
	t.Skip("no free loopback address for an agent")
	return ""
}

// streamsFixture is Streams over real agents (real handlers, real mTLS)
// with a caller identity of one CA.
type streamsFixture struct {
	t  *testing.T
	s  *Streams
	ca *mtls.CA
}

func newStreamsFixture(t *testing.T, opts agentwatch.Options) *streamsFixture {
	ca, err := mtls.NewCA("agents", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	s := NewStreams(opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Start(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return &streamsFixture{t: t, s: s, ca: ca}
}

func (f *streamsFixture) tlsFor(addr string) (*tls.Config, error) {
	cert, key, err := f.ca.IssueClient("controller", time.Hour)
	if err != nil {
		return nil, err
	}
	return mtls.ClientConfig(cert, key, f.ca.CertPEM(), addr)
}

func (f *streamsFixture) identity(_, addr string) ([]byte, []byte, []byte, error) {
	cert, key, err := f.ca.IssueServer("vmagent", nil, []net.IP{net.ParseIP(addr)}, time.Hour)
	return cert, key, f.ca.CertPEM(), err
}

func (f *streamsFixture) ensure(name, addr string) types.NamespacedName {
	key := types.NamespacedName{Namespace: "vmns", Name: name}
	if err := f.s.ensure(key, addr, workload.Spec{}, streamSeen{}, f.tlsFor); err != nil {
		f.t.Fatal(err)
	}
	return key
}

// waitLink waits, taking the events, until key's link satisfies ok; it
// returns how many events named key meanwhile.
func (f *streamsFixture) waitLink(key types.NamespacedName, what string, within time.Duration, ok func(AgentLink) bool) int {
	f.t.Helper()
	deadline := time.After(within)
	n := 0
	for !ok(f.s.link(key)) {
		select {
		case e := <-f.s.Events():
			if e.Object.Name == key.Name {
				n++
			}
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			f.t.Fatalf("%s: not %s within %s: %+v", key.Name, what, within, f.s.link(key))
		}
	}
	return n
}

// waitEvent waits for an event naming key.
func (f *streamsFixture) waitEvent(key types.NamespacedName, what string) {
	f.t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case e := <-f.s.Events():
			if e.Object.Name == key.Name && e.Object.Namespace == key.Namespace {
				return
			}
		case <-deadline:
			f.t.Fatalf("%s: no event after %s", key.Name, what)
		}
	}
}

// A sidecar stopped on a simulated VM (the real agent, its unit stood in
// for systemd) enqueues its MeshVM from the stream alone, and so does an
// agent that restarts; the AGENT column says connected with the version.
func TestStreamsEnqueueAVMSideChange(t *testing.T) {
	f := newStreamsFixture(t, agentwatch.Options{Backoff: 100 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	ip := freeLoopback(t)
	fleet, err := agentsim.Start(agentsim.Options{N: 1, Dir: t.TempDir(), First: netip.MustParseAddr(ip), Identity: f.identity})
	if err != nil {
		t.Fatal(err)
	}
	defer fleet.Close()
	vm := fleet.VMs[0]
	key := f.ensure("vm1", vm.Address)
	// The first message disagrees with what the pass saw (streamSeen{}: no
	// version): it enqueues.
	if n := f.waitLink(key, "connected", 30*time.Second, func(l AgentLink) bool { return l.Connected }); n == 0 {
		f.waitEvent(key, "the first message")
	}
	l := f.s.link(key)
	if l.Polled || l.Version == "" || !strings.HasPrefix(l.column(), "connected "+l.Version+" since ") {
		t.Errorf("link %+v, column %q", l, l.column())
	}
	if open, polled := f.s.Open(); open != 1 || polled != 0 {
		t.Errorf("open %d, polled %d; want 1 stream", open, polled)
	}

	// Ensure again with the same address: the stream is left alone.
	f.ensure("vm1", vm.Address)
	if since := f.s.link(key).Since; !since.Equal(l.Since) {
		t.Errorf("an unchanged ensure reopened the stream: since %s, was %s", since, l.Since)
	}

	// The unit as the agent's postinst writes it; then started and stopped.
	unit := filepath.Join(vm.Root, "etc/systemd/system/istio.service")
	if err := os.MkdirAll(filepath.Dir(unit), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(unit, []byte("[Service]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.StartSidecar(); err != nil {
		t.Fatal(err)
	}
	f.waitEvent(key, "the sidecar started")
	if _, err := vm.StopSidecar(); err != nil {
		t.Fatal(err)
	}
	f.waitEvent(key, "the sidecar stopped")

	f.s.forget(key)
	if open, _ := f.s.Open(); open != 0 {
		t.Errorf("%d streams open after forget", open)
	}
	if _, err := vm.StartSidecar(); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-f.s.Events():
		t.Errorf("an event of a forgotten VM: %v", e.Object.Name)
	case <-time.After(2 * time.Second):
	}
}

// An agent whose packets stop (the VM gone without closing anything) is
// disconnected within two keepalive periods, from the stream's pings; an
// agent without watch.v1 is polled.
func TestStreamsNoticeASilentLossAndPollOlderAgents(t *testing.T) {
	f := newStreamsFixture(t, agentwatch.Options{PollInterval: 200 * time.Millisecond, Backoff: time.Second})
	ip := freeLoopback(t)
	cert, key, _, err := f.identity("", ip)
	if err != nil {
		t.Fatal(err)
	}
	agent := agenttest.Start(t, agenttest.Options{Listen: net.JoinHostPort(ip, "0"), CA: f.ca, ServerCert: cert, ServerKey: key})
	hole := newBlackhole(t, net.JoinHostPort(ip, fmt.Sprint(agentspec.Port)), agent.Addr)
	lost := f.ensure("lost", ip)

	oldIP := freeLoopback(t)
	cert, key, _, err = f.identity("", oldIP)
	if err != nil {
		t.Fatal(err)
	}
	agenttest.Start(t, agenttest.Options{Listen: net.JoinHostPort(oldIP, fmt.Sprint(agentspec.Port)), CA: f.ca, ServerCert: cert, ServerKey: key,
		Lacking: []string{agentspec.WatchCapability}})
	old := f.ensure("old", oldIP)

	f.waitLink(lost, "connected", 30*time.Second, func(l AgentLink) bool { return l.Connected })
	f.waitLink(old, "polled", 30*time.Second, func(l AgentLink) bool { return l.Connected && l.Polled })
	if col := f.s.link(old).column(); !strings.HasPrefix(col, "polled ") {
		t.Errorf("an older agent's column: %q", col)
	}
	if open, polled := f.s.Open(); open != 2 || polled != 1 {
		t.Errorf("open %d, polled %d; want 2 and 1", open, polled)
	}

	hole.silence()
	silenced := time.Now()
	bound := 2 * agentspec.KeepaliveTime
	f.waitLink(lost, "disconnected", bound+agentspec.KeepaliveTimeout, func(l AgentLink) bool { return l.Known && !l.Connected })
	t.Logf("a silent loss noticed after %s (bound: two keepalive periods, %s)", time.Since(silenced).Round(100*time.Millisecond), bound)
	if l := f.s.link(lost); !strings.HasPrefix(l.column(), "disconnected since ") || l.Err == "" {
		t.Errorf("link %+v, column %q", l, l.column())
	}
	hole.restore()
	f.waitLink(lost, "connected again", 30*time.Second, func(l AgentLink) bool { return l.Connected })
}

// blackhole forwards TCP from listen to target until silenced: then it
// keeps every connection open and drops what flows, as a VM that vanished
// without a FIN or RST.
type blackhole struct {
	target string
	silent atomic.Bool
	mu     sync.Mutex
	conns  []net.Conn
}

func newBlackhole(t *testing.T, listen, target string) *blackhole {
	b := &blackhole{target: target}
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		lis.Close()
		b.mu.Lock()
		for _, c := range b.conns {
			c.Close()
		}
		b.mu.Unlock()
	})
	go func() {
		for {
			in, err := lis.Accept()
			if err != nil {
				return
			}
			if b.silent.Load() {
				in.Close() // what matters is the stream already open
				continue
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			b.keep(in, out)
			go b.pipe(in, out)
			go b.pipe(out, in)
		}
	}()
	return b
}

func (b *blackhole) keep(cs ...net.Conn) {
	b.mu.Lock()
	b.conns = append(b.conns, cs...)
	b.mu.Unlock()
}

func (b *blackhole) silence() { b.silent.Store(true) }
func (b *blackhole) restore() { b.silent.Store(false) }

func (b *blackhole) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			dst.Close()
			return
		}
		if b.silent.Load() {
			continue
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}
