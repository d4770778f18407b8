//go:build linux

package agentclient_test

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/meshvm/meshvm/pkg/agentspec"
	"github.com/meshvm/meshvm/pkg/host/agentclient"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
	"github.com/meshvm/meshvm/vmagent/agenttest"
)

func TestWatchOnAnOlderAgentSaysSo(t *testing.T) {
	t.Parallel()
	a := agenttest.Start(t, agenttest.Options{Lacking: []string{agentspec.WatchCapability}})
	c := a.Client(t, a.ClientTLS(t))
	err := c.Watch(context.Background(), &agentv1.WatchRequest{}, func(*agentv1.WatchResponse) error { return nil })
	if !errors.Is(err, agentclient.ErrNoWatch) {
		t.Fatalf("got %v, want ErrNoWatch", err)
	}
}

// A VM that vanishes without a word (a cable pulled, a host frozen: no FIN,
// no RST) ends the watch through keepalive, within KeepaliveTime +
// KeepaliveTimeout of its last answer: the stream is the liveness signal.
func TestWatchEndsWhenTheVMGoesSilent(t *testing.T) {
	t.Parallel()
	a := agenttest.Start(t, agenttest.Options{})
	link := newFreezableLink(t, a.Addr)
	c, err := agentclient.Dial(link.addr, a.ClientTLS(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	first := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		var once sync.Once
		done <- c.Watch(context.Background(), &agentv1.WatchRequest{}, func(*agentv1.WatchResponse) error {
			once.Do(func() { close(first) })
			return nil
		})
	}()
	select {
	case <-first:
	case err := <-done:
		t.Fatalf("watch ended before its first message: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no first message")
	}
	link.freeze()
	frozen := time.Now()
	bound := agentspec.KeepaliveTime + agentspec.KeepaliveTimeout
	select {
	case err := <-done:
		took := time.Since(frozen)
		t.Logf("the watch ended %s after the VM went silent (bound %s): %v", took.Round(100*time.Millisecond), bound, err)
		if err == nil {
			t.Error("the watch ended without an error")
		}
	case <-time.After(bound + 5*time.Second):
		t.Fatalf("the watch still open %s after the VM went silent (bound %s)", bound+5*time.Second, bound)
	}
}

// freezableLink forwards TCP to target until frozen, then keeps every
// connection open and moves no more bytes either way.
type freezableLink struct {
	addr   string
	mu     sync.Mutex
	frozen bool
	wake   chan struct{}
}

func newFreezableLink(t *testing.T, target string) *freezableLink {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &freezableLink{addr: lis.Addr().String(), wake: make(chan struct{})}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			in, err := lis.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			t.Cleanup(func() { in.Close(); out.Close() })
			go l.pipe(in, out)
			go l.pipe(out, in)
		}
	}()
	return l
}

func (l *freezableLink) freeze() {
	l.mu.Lock()
	l.frozen = true
	l.mu.Unlock()
}

func (l *freezableLink) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		l.mu.Lock()
		frozen := l.frozen
		l.mu.Unlock()
		if frozen {
			io.Copy(io.Discard, src) // swallow everything, answer nothing
			return
		}
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
