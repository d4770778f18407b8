// Package agentwatch holds one Watch stream per VM agent and turns what
// they send into updates: the controller's event source (a stopped sidecar
// reaches a MeshVM in about a second, without polling) and its liveness
// signal (the AGENT column). Streams that drop come back with jittered
// exponential backoff, and new connections are paced, so a thousand agents
// do not dial at once after a failover. An agent without the watch.v1
// capability (an older release) is polled instead.
package agentwatch

import (
	"context"
	"crypto/tls"
	"errors"
	"math/rand/v2"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meshvm/meshvm/pkg/host/agentclient"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

// Target is where one VM's agent is and how to watch it.
type Target struct {
	// Address is the agent's host:port.
	Address string
	TLS     *tls.Config
	// AppProbe, when set, is the app's health probe the agent runs every
	// AppProbePeriod (0 is the agent's default).
	AppProbe       *agentv1.ProbeRequest
	AppProbePeriod time.Duration
}

func (t Target) same(o Target) bool {
	return t.Address == o.Address && t.TLS == o.TLS && t.AppProbePeriod == o.AppProbePeriod &&
		proto.Equal(t.AppProbe, o.AppProbe)
}

// Update is what the watcher learned of one VM.
type Update struct {
	VM string
	// Connected says a stream is open (or, for an older agent, its last
	// poll answered).
	Connected bool
	// State is the VM's newest state while connected.
	State *agentv1.WatchResponse
	// Err is why the VM is not connected.
	Err error
	// Polled says the agent cannot stream (no watch.v1) and State came
	// from GetStatus.
	Polled bool
}

// Options tune a Watcher; the zero value takes the defaults.
type Options struct {
	// DialsPerSecond paces new streams over all VMs (default 50, burst as
	// many): 1,000 VMs are all watched again within 20 s of a failover.
	DialsPerSecond float64
	// Backoff is the first wait after a stream drops (default 1 s),
	// doubling to MaxBackoff (default 1 min), each wait jittered by ±50 %.
	Backoff, MaxBackoff time.Duration
	// PollInterval is how often an agent without watch.v1 is asked for its
	// status (default 30 s).
	PollInterval time.Duration
	// Dial connects to an agent (agentclient.DialWatch when nil).
	Dial func(addr string, cfg *tls.Config) (*agentclient.Client, error)
}

func (o *Options) defaults() {
	if o.DialsPerSecond <= 0 {
		o.DialsPerSecond = 50
	}
	if o.Backoff <= 0 {
		o.Backoff = time.Second
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = time.Minute
	}
	if o.PollInterval <= 0 {
		o.PollInterval = 30 * time.Second
	}
	if o.Dial == nil {
		o.Dial = agentclient.DialWatch
	}
}

// Watcher holds a stream per VM it is told of. Each VM costs one goroutine
// and one connection; updates are delivered from those goroutines, one VM's
// in order.
type Watcher struct {
	opts   Options
	notify func(Update)
	dials  *rate.Limiter

	mu     sync.Mutex
	vms    map[string]*vmWatch
	closed bool
	wg     sync.WaitGroup
}

type vmWatch struct {
	target Target
	cancel context.CancelFunc
	done   chan struct{}
}

// New returns a Watcher that tells notify of every update. notify must not
// block for long: it holds up that VM's stream (a controller enqueues).
func New(notify func(Update), opts Options) *Watcher {
	opts.defaults()
	burst := int(opts.DialsPerSecond)
	if burst < 1 {
		burst = 1
	}
	return &Watcher{opts: opts, notify: notify, dials: rate.NewLimiter(rate.Limit(opts.DialsPerSecond), burst), vms: map[string]*vmWatch{}}
}

// Ensure watches vm at t: it starts a stream, or restarts it when t
// changed, and leaves an unchanged one alone.
func (w *Watcher) Ensure(vm string, t Target) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	if cur, ok := w.vms[vm]; ok {
		if cur.target.same(t) {
			return
		}
		cur.cancel()
	}
	ctx, cancel := context.WithCancel(context.Background())
	vw := &vmWatch{target: t, cancel: cancel, done: make(chan struct{})}
	w.vms[vm] = vw
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		defer close(vw.done)
		w.run(ctx, vm, t)
	}()
}

// Forget stops watching vm and waits for its stream to end; no update of
// it follows.
func (w *Watcher) Forget(vm string) {
	w.mu.Lock()
	vw, ok := w.vms[vm]
	delete(w.vms, vm)
	w.mu.Unlock()
	if ok {
		vw.cancel()
		<-vw.done
	}
}

// Watched is how many VMs are watched (streams open or being opened).
func (w *Watcher) Watched() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.vms)
}

// Close stops every stream and waits for them.
func (w *Watcher) Close() {
	w.mu.Lock()
	w.closed = true
	for vm, vw := range w.vms {
		vw.cancel()
		delete(w.vms, vm)
	}
	w.mu.Unlock()
	w.wg.Wait()
}

// run keeps one VM watched until ctx ends.
func (w *Watcher) run(ctx context.Context, vm string, t Target) {
	wait := w.opts.Backoff
	for {
		if err := w.dials.Wait(ctx); err != nil {
			return
		}
		streamed, err := w.watchOnce(ctx, vm, t)
		if ctx.Err() != nil {
			return
		}
		if streamed {
			wait = w.opts.Backoff // it worked for a while: start over
		}
		w.notify(Update{VM: vm, Err: err})
		if !sleep(ctx, jitter(wait)) {
			return
		}
		wait = min(2*wait, w.opts.MaxBackoff)
	}
}

// watchOnce dials and streams (or polls an older agent) until the stream
// ends, saying whether any state arrived.
func (w *Watcher) watchOnce(ctx context.Context, vm string, t Target) (bool, error) {
	c, err := w.opts.Dial(t.Address, t.TLS)
	if err != nil {
		return false, err
	}
	defer c.Close()
	req := &agentv1.WatchRequest{AppProbe: t.AppProbe}
	if t.AppProbePeriod > 0 {
		req.AppProbePeriod = durationpb.New(t.AppProbePeriod)
	}
	streamed := false
	err = c.Watch(ctx, req, func(st *agentv1.WatchResponse) error {
		streamed = true
		w.notify(Update{VM: vm, Connected: true, State: st})
		return nil
	})
	if errors.Is(err, agentclient.ErrNoWatch) {
		return w.poll(ctx, vm, c)
	}
	return streamed, err
}

// poll asks an agent that cannot stream for its status every PollInterval,
// telling only changes, until a poll fails.
func (w *Watcher) poll(ctx context.Context, vm string, c *agentclient.Client) (bool, error) {
	var last *agentv1.WatchResponse
	polled := false
	for {
		st, err := c.Status(ctx)
		if err != nil {
			return polled, err
		}
		polled = true
		cur := fromStatus(st)
		if last == nil || changed(last, cur) {
			w.notify(Update{VM: vm, Connected: true, State: cur, Polled: true})
			last = cur
		}
		if !sleep(ctx, w.opts.PollInterval) {
			return polled, ctx.Err()
		}
	}
}

// jitter spreads d by ±50 %.
func jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d+1)
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
