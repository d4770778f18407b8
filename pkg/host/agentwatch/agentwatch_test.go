//go:build linux

package agentwatch_test

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/meshvm/meshvm/pkg/agentspec"
	"github.com/meshvm/meshvm/pkg/host/agentwatch"
	"github.com/meshvm/meshvm/vmagent/agenttest"
)

// updates collects a Watcher's updates per VM.
type updates struct {
	mu   sync.Mutex
	byVM map[string][]agentwatch.Update
	seen chan string
}

func newUpdates() *updates {
	return &updates{byVM: map[string][]agentwatch.Update{}, seen: make(chan string, 1000)}
}

func (u *updates) add(up agentwatch.Update) {
	u.mu.Lock()
	u.byVM[up.VM] = append(u.byVM[up.VM], up)
	u.mu.Unlock()
	u.seen <- up.VM
}

func (u *updates) of(vm string) []agentwatch.Update {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]agentwatch.Update(nil), u.byVM[vm]...)
}

// waitFor waits until vm's latest update satisfies ok.
func (u *updates) waitFor(t *testing.T, vm string, what string, ok func(agentwatch.Update) bool) agentwatch.Update {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		if ups := u.of(vm); len(ups) > 0 && ok(ups[len(ups)-1]) {
			return ups[len(ups)-1]
		}
		select {
		case <-u.seen:
		case <-deadline:
			t.Fatalf("%s: no update where %s; got %+v", vm, what, u.of(vm))
		}
	}
}

func connected(u agentwatch.Update) bool { return u.Connected && u.State != nil }

// Real agents over real mTLS: each VM's stream brings its state; an older
// agent is polled; a forgotten VM gets no more updates.
func TestWatcherStreamsEachVMAndPollsOlderAgents(t *testing.T) {
	got := newUpdates()
	w := agentwatch.New(got.add, agentwatch.Options{PollInterval: 200 * time.Millisecond})
	defer w.Close()

	a := agenttest.Start(t, agenttest.Options{})
	b := agenttest.Start(t, agenttest.Options{CA: a.CA})
	old := agenttest.Start(t, agenttest.Options{CA: a.CA, Lacking: []string{agentspec.WatchCapability}})
	tlsCfg := a.ClientTLS(t)
	w.Ensure("a", agentwatch.Target{Address: a.Addr, TLS: tlsCfg})
	w.Ensure("b", agentwatch.Target{Address: b.Addr, TLS: tlsCfg})
	w.Ensure("old", agentwatch.Target{Address: old.Addr, TLS: tlsCfg})

	for _, vm := range []string{"a", "b"} {
		u := got.waitFor(t, vm, "connected", connected)
		if u.Polled || u.State.GetSequence() != 1 {
			t.Errorf("%s: polled %v, sequence %d; want a stream's first message", vm, u.Polled, u.State.GetSequence())
		}
	}
	if u := got.waitFor(t, "old", "connected", connected); !u.Polled {
		t.Errorf("the older agent's update is not marked polled")
	}
	if n := w.Watched(); n != 3 {
		t.Errorf("watched %d VMs, want 3", n)
	}

	// Ensure with the same target leaves the stream alone.
	before := len(got.of("a"))
	w.Ensure("a", agentwatch.Target{Address: a.Addr, TLS: tlsCfg})
	time.Sleep(300 * time.Millisecond)
	if n := len(got.of("a")); n != before {
		t.Errorf("an unchanged Ensure restarted the stream: %d updates, was %d", n, before)
	}

	w.Forget("b")
	after := len(got.of("b"))
	time.Sleep(300 * time.Millisecond)
	if n := len(got.of("b")); n != after {
		t.Errorf("updates of a forgotten VM: %d, was %d", n, after)
	}
}

// A VM whose agent goes away is reported not connected at once (the
// connection is closed), and watched again when it returns, after a
// backoff.
func TestWatcherReportsALostAgentAndReconnects(t *testing.T) {
	got := newUpdates()
	w := agentwatch.New(got.add, agentwatch.Options{Backoff: 100 * time.Millisecond, MaxBackoff: 400 * time.Millisecond})
	defer w.Close()

	a := agenttest.Start(t, agenttest.Options{})
	link := newCuttableLink(t, a.Addr)
	w.Ensure("vm1", agentwatch.Target{Address: link.addr(), TLS: a.ClientTLS(t)})
	got.waitFor(t, "vm1", "connected", connected)

	link.cut()
	cut := time.Now()
	u := got.waitFor(t, "vm1", "not connected", func(u agentwatch.Update) bool { return !u.Connected })
	t.Logf("lost %s after the cut: %v", time.Since(cut).Round(time.Millisecond), u.Err)
	if u.Err == nil {
		t.Error("a lost VM's update carries no error")
	}

	link.restore()
	restored := time.Now()
	got.waitFor(t, "vm1", "connected again", connected)
	t.Logf("watched again %s after the agent came back", time.Since(restored).Round(time.Millisecond))
}

// cuttableLink forwards TCP to target; cut closes every connection and
// refuses new ones until restore listens again on the same port.
type cuttableLink struct {
	t      *testing.T
	target string
	mu     sync.Mutex
	lis    net.Listener
	conns  []net.Conn
	port   string
}

func newCuttableLink(t *testing.T, target string) *cuttableLink {
	l := &cuttableLink{t: t, target: target}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, l.port, _ = net.SplitHostPort(lis.Addr().String())
	l.serve(lis)
	t.Cleanup(l.cut)
	return l
}

func (l *cuttableLink) addr() string { return net.JoinHostPort("127.0.0.1", l.port) }

func (l *cuttableLink) serve(lis net.Listener) {
	l.mu.Lock()
	l.lis = lis
	l.mu.Unlock()
	go func() {
		for {
			in, err := lis.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", l.target)
			if err != nil {
				in.Close()
				continue
			}
			l.mu.Lock()
			l.conns = append(l.conns, in, out)
			l.mu.Unlock()
			go pipe(in, out)
			go pipe(out, in)
		}
	}()
}

func pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

func (l *cuttableLink) cut() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lis != nil {
		l.lis.Close()
		l.lis = nil
	}
	for _, c := range l.conns {
		c.Close()
	}
	l.conns = nil
}

func (l *cuttableLink) restore() {
	lis, err := net.Listen("tcp", l.addr())
	if err != nil {
		l.t.Fatal(err)
	}
	l.serve(lis)
}
