package server

import (
	"context"
	"runtime"
	"runtime/debug"
	"sync"
	"time"

	"google.golang.org/grpc"
)

// trimAfter is how long the agent waits after its last call before handing
// freed memory back to the OS.
const trimAfter = time.Second

// trimmer returns the heap's free pages to the OS once no call has run for
// trimAfter. The agent idles on small VMs between bursts of calls (an
// onboarding, a status poll); Go's scavenger alone would keep what the last
// burst used (a file delivery's buffers are tens of MiB) for minutes. One
// forced collection per burst costs about a millisecond on this heap.
type trimmer struct {
	after  time.Duration
	free   func()
	mu     sync.Mutex
	active int
	timer  *time.Timer
}

func newTrimmer() *trimmer { return newTrimmerWith(trimAfter, freeMemory) }

func newTrimmerWith(after time.Duration, free func()) *trimmer {
	t := &trimmer{after: after, free: free}
	t.timer = time.AfterFunc(time.Hour, t.trim)
	t.timer.Stop()
	return t
}

// begin marks a call running: no trim while it does.
func (t *trimmer) begin() {
	t.mu.Lock()
	t.active++
	t.timer.Stop()
	t.mu.Unlock()
}

// end marks a call done; the last one arms the trim.
func (t *trimmer) end() {
	t.mu.Lock()
	t.active--
	if t.active == 0 {
		t.timer.Reset(t.after)
	}
	t.mu.Unlock()
}

func (t *trimmer) trim() {
	t.mu.Lock()
	busy := t.active > 0
	t.mu.Unlock()
	if !busy {
		t.free()
	}
}

func freeMemory() {
	// Two collections: the first moves pooled buffers (gRPC's, ours) to
	// sync.Pool's victim cache, the second frees them; FreeOSMemory runs
	// the second and returns the pages.
	runtime.GC()
	debug.FreeOSMemory()
}

func (t *trimmer) unary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	t.begin()
	defer t.end()
	return handler(ctx, req)
}

func (t *trimmer) stream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	t.begin()
	defer t.end()
	return handler(srv, ss)
}
