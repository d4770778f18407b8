package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
	"github.com/meshvm/meshvm/vmagent/config"
)

// Guard is the agent's front door. It bounds what all callers together can
// make the agent hold, before gRPC allocates for them:
//
//   - connections in their handshake (anyone who reaches the port) at
//     MaxHandshakes, the oldest pushed out by a new one, each for at most
//     HandshakeTimeout;
//   - authenticated connections at MaxConnections: one more closes the one
//     idle longest (never-used first), or is refused at accept when every
//     connection has a call running, so a caller that holds a stream keeps
//     it through a flood; one that makes no call is closed after
//     FirstCallTimeout;
//   - streams at MaxStreams over all connections, and per kind (deliveries,
//     log streams, calls that run programs), refused in gRPC's tap before
//     their bytes are buffered; a request not fully received within
//     RequestTimeout is cancelled, and sooner when another caller needs
//     its slot.
//
// Memory follows: each stream buffers at most its flow-control window and
// one message (flowWindow + maxMessage), a connection about 100 KiB.
type Guard struct {
	log    *slog.Logger
	limits config.Limits

	mu         sync.Mutex
	handshakes []*conn // oldest first
	ready      []*conn
	calls      []*call // the streams admitted, oldest first
	slots      [numSlots]int

	refused atomic.Int64 // connections refused or pushed out, for the log's rate
}

// NewGuard returns a Guard enforcing limits.
func NewGuard(log *slog.Logger, limits config.Limits) *Guard {
	return &Guard{log: log, limits: limits}
}

// Listener wraps l so that accepted connections are counted and bounded.
func (g *Guard) Listener(l net.Listener) net.Listener { return &guardedListener{Listener: l, g: g} }

// Credentials wraps creds so that a finished handshake moves its connection
// from the anonymous pool to the authenticated one.
func (g *Guard) Credentials(creds credentials.TransportCredentials) credentials.TransportCredentials {
	return &guardedCreds{TransportCredentials: creds, g: g}
}

// Counts is what the guard holds now, for tests and benchmarks.
type Counts struct {
	Handshakes, Connections, Streams int
}

// Counts reports the connections and streams held now.
func (g *Guard) Counts() Counts {
	g.mu.Lock()
	defer g.mu.Unlock()
	return Counts{Handshakes: len(g.handshakes), Connections: len(g.ready), Streams: len(g.calls)}
}

type guardedListener struct {
	net.Listener
	g *Guard
}

// Accept returns the next connection the guard admits; refused ones are
// closed here, before any handshake work.
func (l *guardedListener) Accept() (net.Conn, error) {
	for {
		raw, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if c := l.g.admit(raw); c != nil {
			return c, nil
		}
	}
}

// conn is one accepted connection, counted from accept to close.
type conn struct {
	net.Conn
	g         *Guard
	closeOnce sync.Once

	// Guarded by g.mu.
	authenticated bool
	closed        bool
	called        bool
	streams       int
	lastActive    time.Time
	firstCall     *time.Timer
}

func (c *conn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		c.g.forget(c)
		err = c.Conn.Close()
	})
	return err
}

// admit counts a new connection in; when the handshake pool is full the
// oldest handshake is pushed out, and when every authenticated slot holds a
// running call the connection is refused at once.
func (g *Guard) admit(raw net.Conn) *conn {
	g.mu.Lock()
	if len(g.ready) >= g.limits.MaxConnections && g.victimLocked() == nil {
		g.mu.Unlock()
		g.refuse(raw, "all %d connections have calls running (limits.max_connections)", g.limits.MaxConnections)
		return nil
	}
	var out *conn
	if len(g.handshakes) >= g.limits.MaxHandshakes {
		out = g.handshakes[0]
		g.removeLocked(out)
	}
	c := &conn{Conn: raw, g: g}
	g.handshakes = append(g.handshakes, c)
	g.mu.Unlock()
	if out != nil {
		g.refuse(out, "%d handshakes already pending (limits.max_handshakes): the oldest is dropped", g.limits.MaxHandshakes)
	}
	return c
}

// refuse closes c, logging at most now and then: a flood must not fill the journal.
func (g *Guard) refuse(c net.Conn, format string, args ...any) {
	c.Close()
	if n := g.refused.Add(1); n == 1 || n%1000 == 0 {
		g.log.Warn("connection refused", "remote", c.RemoteAddr().String(), "why", fmt.Sprintf(format, args...), "refused_so_far", n)
	}
}

// authenticated moves c into the authenticated pool once its TLS handshake
// has verified the caller, pushing out an idle connection when full.
func (g *Guard) authenticated(c *conn) error {
	g.mu.Lock()
	if c.closed {
		g.mu.Unlock()
		return errors.New("connection closed during its handshake")
	}
	var out *conn
	if len(g.ready) >= g.limits.MaxConnections {
		if out = g.victimLocked(); out == nil {
			g.mu.Unlock()
			return fmt.Errorf("all %d connections have calls running (limits.max_connections)", g.limits.MaxConnections)
		}
		g.removeLocked(out)
	}
	g.handshakes = remove(g.handshakes, c)
	g.ready = append(g.ready, c)
	c.authenticated, c.lastActive = true, time.Now()
	c.firstCall = time.AfterFunc(time.Duration(g.limits.FirstCallTimeout), func() {
		g.mu.Lock()
		unused := !c.called
		g.mu.Unlock()
		if unused {
			c.Close()
		}
	})
	g.mu.Unlock()
	if out != nil {
		g.refuse(out, "%d connections open (limits.max_connections): the one idle longest is closed", g.limits.MaxConnections)
	}
	return nil
}

// victimLocked picks the authenticated connection to close for a new one:
// one that never made a call, oldest first, else the one idle longest; nil
// when every connection has a call running.
func (g *Guard) victimLocked() *conn {
	var best *conn
	for _, c := range g.ready {
		if c.closed || c.streams > 0 {
			continue
		}
		switch {
		case best == nil:
			best = c
		case !c.called && best.called:
			best = c
		case c.called == best.called && c.lastActive.Before(best.lastActive):
			best = c
		}
	}
	return best
}

func (g *Guard) forget(c *conn) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.removeLocked(c)
}

func (g *Guard) removeLocked(c *conn) {
	if c.closed {
		return
	}
	c.closed = true
	if c.firstCall != nil {
		c.firstCall.Stop()
	}
	if c.authenticated {
		g.ready = remove(g.ready, c)
	} else {
		g.handshakes = remove(g.handshakes, c)
	}
}

func remove(cs []*conn, c *conn) []*conn {
	for i, x := range cs {
		if x == c {
			return append(cs[:i], cs[i+1:]...)
		}
	}
	return cs
}

// guardedCreds is the TLS credentials with the guard told of each
// finished handshake; the AuthInfo it returns carries the connection so
// the tap can count streams per connection.
type guardedCreds struct {
	credentials.TransportCredentials
	g *Guard
}

func (c *guardedCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	out, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		return nil, nil, err
	}
	gc, ok := raw.(*conn)
	tlsInfo, isTLS := info.(credentials.TLSInfo)
	if !ok || !isTLS {
		return out, info, nil
	}
	if err := c.g.authenticated(gc); err != nil {
		out.Close()
		return nil, nil, err
	}
	return out, connInfo{TLSInfo: tlsInfo, conn: gc}, nil
}

func (c *guardedCreds) Clone() credentials.TransportCredentials {
	return &guardedCreds{TransportCredentials: c.TransportCredentials.Clone(), g: c.g}
}

// connInfo is TLSInfo with the guard's connection.
type connInfo struct {
	credentials.TLSInfo
	conn *conn
}

// tlsState returns the TLS state of an authenticated peer.
func tlsState(info credentials.AuthInfo) (tls.ConnectionState, bool) {
	switch i := info.(type) {
	case credentials.TLSInfo:
		return i.State, true
	case connInfo:
		return i.State, true
	}
	return tls.ConnectionState{}, false
}

// slotKind sorts calls by what they hold for long: a slot each, per class.
type slotKind int

const (
	slotOther    slotKind = iota
	slotDelivery          // PutFile: a file streaming in
	slotLogs              // SidecarLogs: a follower, journalctl for the journal
	slotProcess           // Install, Uninstall, CheckNetwork: programs run
	slotWatch             // Watch: open for as long as the caller watches
	numSlots
)

func slotOf(method string) slotKind {
	switch method {
	case agentv1.AgentService_PutFile_FullMethodName:
		return slotDelivery
	case agentv1.AgentService_SidecarLogs_FullMethodName:
		return slotLogs
	case agentv1.AgentService_Install_FullMethodName, agentv1.AgentService_Uninstall_FullMethodName,
		agentv1.AgentService_CheckNetwork_FullMethodName:
		return slotProcess
	case agentv1.AgentService_Watch_FullMethodName:
		return slotWatch
	}
	return slotOther
}

func (g *Guard) slotLimit(k slotKind) (int, string) {
	switch k {
	case slotDelivery:
		return g.limits.MaxDeliveries, fmt.Sprintf("the agent is already receiving %d files, its limit: retry when one has finished", g.limits.MaxDeliveries)
	case slotLogs:
		return g.limits.MaxLogStreams, fmt.Sprintf("the agent is already streaming logs to %d callers (limits.max_log_streams): retry when one has ended", g.limits.MaxLogStreams)
	case slotProcess:
		return g.limits.MaxProcessCalls, fmt.Sprintf("the agent is already running %d installs or network checks (limits.max_process_calls): retry when one has finished", g.limits.MaxProcessCalls)
	case slotWatch:
		return g.limits.MaxWatchStreams, fmt.Sprintf("the agent is already watched by %d callers (limits.max_watch_streams): end a watch that is no longer needed", g.limits.MaxWatchStreams)
	}
	return 0, ""
}

// sendTimeout is how long a stream of kind k may block on a send.
func (g *Guard) sendTimeout(k slotKind) sendTimeout {
	if k == slotWatch {
		return sendTimeout{time.Duration(g.limits.WatchSendTimeout), "limits.watch_send_timeout"}
	}
	return sendTimeout{time.Duration(g.limits.LogSendTimeout), "limits.log_send_timeout"}
}

// sendTimeout is a stream's bound on one blocked send, and its setting's name.
type sendTimeout struct {
	d    time.Duration
	name string
}

// call is what the guard keeps of one stream, reachable from its context.
type call struct {
	cancel      context.CancelCauseFunc
	received    atomic.Bool
	sendTimeout sendTimeout

	// Guarded by g.mu.
	conn     *conn
	kind     slotKind
	started  time.Time
	released bool
}

type callKey struct{}

func callOf(ctx context.Context) *call {
	c, _ := ctx.Value(callKey{}).(*call)
	return c
}

// requestReceived stops the request timer: the caller has sent its request.
func requestReceived(ctx context.Context) {
	if c := callOf(ctx); c != nil {
		c.received.Store(true)
	}
}

// sendBounded runs send, a stream's Send, which blocks while the caller
// reads nothing (gRPC holds 64 KiB per stream); past the stream's send
// timeout (limits.log_send_timeout, limits.watch_send_timeout) it ends the
// call instead, so a caller that stops reading costs its stream, not the
// agent's memory.
func sendBounded(ctx context.Context, send func() error) error {
	c := callOf(ctx)
	if c == nil {
		return send()
	}
	t := time.AfterFunc(c.sendTimeout.d, func() { c.cancel(errSlowReader) })
	err := send()
	if !t.Stop() {
		return status.Errorf(codes.ResourceExhausted, "the caller read nothing for %s (%s): the stream was dropped", c.sendTimeout.d, c.sendTimeout.name)
	}
	return err
}

var errSlowReader = errors.New("the caller read nothing within the stream's send timeout")

// errRequestTimeout ends a call whose request did not arrive in time.
var errRequestTimeout = errors.New("the request did not arrive within limits.request_timeout")

// errPreempted ends a stream whose request has not arrived, for a caller
// that has a request to make when all max_streams are taken.
var errPreempted = errors.New("the call's request had not arrived and another caller needed its slot (limits.max_streams)")

// preemptAge is how long a request may be in flight before its stream can
// be preempted: a real caller's arrives within milliseconds.
const preemptAge = 500 * time.Millisecond

// tap admits a new stream or refuses it before gRPC buffers its data. It
// runs on the connection's reader, so it never blocks. When all
// max_streams are taken, a stream whose request has not arrived after
// preemptAge is ended for the new one (from the connection that holds the
// most streams): half-sent requests cannot starve the callers that send
// theirs.
func (g *Guard) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	var c *conn
	if p, ok := peer.FromContext(ctx); ok {
		if ci, ok := p.AuthInfo.(connInfo); ok {
			c = ci.conn
		}
	}
	k := slotOf(info.FullMethodName)
	ctx, cancel := context.WithCancelCause(ctx)
	cl := &call{cancel: cancel, sendTimeout: g.sendTimeout(k), conn: c, kind: k, started: time.Now()}

	g.mu.Lock()
	if limit, why := g.slotLimit(k); k != slotOther && g.slots[k] >= limit {
		g.mu.Unlock()
		cancel(nil)
		return nil, status.Error(codes.ResourceExhausted, why)
	}
	var victim *call
	if len(g.calls) >= g.limits.MaxStreams {
		if victim = g.preemptableLocked(); victim == nil {
			g.mu.Unlock()
			cancel(nil)
			return nil, status.Errorf(codes.ResourceExhausted, "the agent is serving %d calls, its limit (limits.max_streams): retry shortly", g.limits.MaxStreams)
		}
		g.releaseLocked(victim)
	}
	g.calls = append(g.calls, cl)
	g.slots[k]++
	if c != nil {
		c.streams++
		c.called, c.lastActive = true, time.Now()
	}
	g.mu.Unlock()
	if victim != nil {
		victim.cancel(errPreempted)
	}

	timer := time.AfterFunc(time.Duration(g.limits.RequestTimeout), func() {
		if !cl.received.Load() {
			cancel(errRequestTimeout)
		}
	})
	// The stream's context ends when gRPC closes the stream, whatever the cause.
	context.AfterFunc(ctx, func() {
		timer.Stop()
		g.mu.Lock()
		g.releaseLocked(cl)
		g.mu.Unlock()
	})
	return context.WithValue(ctx, callKey{}, cl), nil
}

// preemptableLocked picks the stream to end for a new one: the oldest
// whose request has not arrived after preemptAge, on the connection that
// holds the most streams; nil when there is none.
func (g *Guard) preemptableLocked() *call {
	var best *call
	now := time.Now()
	for _, cl := range g.calls {
		if cl.received.Load() || now.Sub(cl.started) < preemptAge {
			continue
		}
		switch {
		case best == nil:
			best = cl
		case streamsOf(cl.conn) > streamsOf(best.conn):
			best = cl
		case streamsOf(cl.conn) == streamsOf(best.conn) && cl.started.Before(best.started):
			best = cl
		}
	}
	return best
}

func streamsOf(c *conn) int {
	if c == nil {
		return 0
	}
	return c.streams
}

// releaseLocked gives back cl's slots, once.
func (g *Guard) releaseLocked(cl *call) {
	if cl.released {
		return
	}
	cl.released = true
	for i, x := range g.calls {
		if x == cl {
			g.calls = append(g.calls[:i], g.calls[i+1:]...)
			break
		}
	}
	g.slots[cl.kind]--
	if c := cl.conn; c != nil {
		c.streams--
		c.lastActive = time.Now()
	}
}

// receivedStream marks the request received at the first message in.
type receivedStream struct {
	grpc.ServerStream
}

func (s receivedStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if err == nil {
		requestReceived(s.Context())
	}
	return err
}
