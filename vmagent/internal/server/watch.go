package server

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meshvm/meshvm/pkg/agenterr"
	"github.com/meshvm/meshvm/pkg/buildinfo"
	"github.com/meshvm/meshvm/pkg/credinfo"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

// How often the agent looks at the VM while anyone watches it, and the
// bounds of a watcher's app probe period.
const (
	watchInterval         = time.Second
	defaultAppProbePeriod = 5 * time.Second
	minAppProbePeriod     = time.Second
	maxAppProbePeriod     = 5 * time.Minute
)

// watchHub looks at the VM once per interval while anyone watches, and
// hands the newest state to every watcher: one look serves them all, and
// none runs when nobody watches.
type watchHub struct {
	observe  func(ctx context.Context) *agentv1.WatchResponse
	interval time.Duration

	mu       sync.Mutex
	watchers map[*watcher]struct{}
	latest   *agentv1.WatchResponse // nil until the first look
	stop     context.CancelFunc     // of the looking goroutine; nil when none runs
}

// watcher receives states; a state it has not taken yet is replaced by a
// newer one, so a slow reader costs one state, never a backlog.
type watcher struct {
	states chan *agentv1.WatchResponse
}

func (w *watcher) offer(st *agentv1.WatchResponse) {
	select {
	case <-w.states: // drop the unread, older state
	default:
	}
	w.states <- st
}

func newWatchHub(observe func(context.Context) *agentv1.WatchResponse, interval time.Duration) *watchHub {
	return &watchHub{observe: observe, interval: interval, watchers: map[*watcher]struct{}{}}
}

// subscribe adds a watcher, starting the looks for the first; the returned
// func removes it, stopping them after the last.
func (h *watchHub) subscribe() (*watcher, func()) {
	w := &watcher{states: make(chan *agentv1.WatchResponse, 1)}
	h.mu.Lock()
	h.watchers[w] = struct{}{}
	if h.latest != nil {
		w.offer(h.latest)
	}
	if h.stop == nil {
		ctx, cancel := context.WithCancel(context.Background())
		h.stop = cancel
		go h.look(ctx)
	}
	h.mu.Unlock()
	return w, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		delete(h.watchers, w)
		if len(h.watchers) == 0 && h.stop != nil {
			h.stop()
			h.stop, h.latest = nil, nil // a later watcher gets a fresh look
		}
	}
}

func (h *watchHub) look(ctx context.Context) {
	t := time.NewTicker(h.interval)
	defer t.Stop()
	for {
		st := h.observe(ctx)
		h.mu.Lock()
		if ctx.Err() != nil {
			h.mu.Unlock()
			return
		}
		if h.latest == nil || !sameState(h.latest, st) {
			h.latest = st
			for w := range h.watchers {
				w.offer(st)
			}
		}
		h.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sameState compares two looks, leaving out when they were taken.
func sameState(a, b *agentv1.WatchResponse) bool {
	return len(changedTopics(a, b)) == 0
}

// changedTopics names what differs between two states.
func changedTopics(a, b *agentv1.WatchResponse) []agentv1.WatchTopic {
	var out []agentv1.WatchTopic
	if !proto.Equal(a.GetSidecar(), b.GetSidecar()) {
		out = append(out, agentv1.WatchTopic_WATCH_TOPIC_SIDECAR)
	}
	if !proto.Equal(a.GetWorkloadCertificate(), b.GetWorkloadCertificate()) {
		out = append(out, agentv1.WatchTopic_WATCH_TOPIC_CERTIFICATE)
	}
	if !proto.Equal(a.GetToken(), b.GetToken()) {
		out = append(out, agentv1.WatchTopic_WATCH_TOPIC_TOKEN)
	}
	if !slices.Equal(a.GetAddresses(), b.GetAddresses()) {
		out = append(out, agentv1.WatchTopic_WATCH_TOPIC_ADDRESSES)
	}
	if !sameProbe(a.GetApp(), b.GetApp()) {
		out = append(out, agentv1.WatchTopic_WATCH_TOPIC_APP)
	}
	return out
}

// sameProbe compares two probe results by outcome: latency varies on
// every probe and is not a change.
func sameProbe(a, b *agentv1.ProbeResponse) bool {
	if (a == nil) != (b == nil) {
		return false
	}
	return a.GetOk() == b.GetOk() && a.GetStatusCode() == b.GetStatusCode() && a.GetError() == b.GetError()
}

// observeVM is one look at what a watcher is told of. Each read is bounded:
// systemd's answer by a timeout, the certificate and token as GetStatus
// reads them (bounded, no links, regular files only).
func (s *Server) observeVM(ctx context.Context) *agentv1.WatchResponse {
	out := &agentv1.WatchResponse{
		ObservedAt:     timestamppb.Now(),
		AgentVersion:   buildinfo.String(),
		AgentStartedAt: timestamppb.New(s.started),
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	st, err := s.deps.Sidecar.State(sctx)
	cancel()
	out.Sidecar = sidecarState(st, err)
	if c, err := credinfo.ReadCertificate(s.deps.Root, workloadCertPath); err == nil {
		out.WorkloadCertificate = certInfo(workloadCertPath, c)
	} else if !errors.Is(err, os.ErrNotExist) {
		s.note("certificate", err)
	}
	out.Token = s.tokenStatus()
	out.Addresses = globalAddresses()
	return out
}

// globalAddresses are the VM's global unicast addresses, sorted; the
// interfaces are read from the kernel on each look (no process runs).
func globalAddresses() []string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []string
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		if ok && ip.Unmap().IsGlobalUnicast() {
			out = append(out, ip.Unmap().String())
		}
	}
	slices.Sort(out)
	return out
}

// Watch sends the VM's state, then each change, until the caller leaves.
// The guard holds it to limits.max_watch_streams and drops a caller that
// reads nothing for limits.watch_send_timeout.
func (s *Server) Watch(req *agentv1.WatchRequest, stream agentv1.AgentService_WatchServer) error {
	ctx := stream.Context()
	period, err := appProbePeriod(req)
	if err != nil {
		return err
	}
	apps := make(chan *agentv1.ProbeResponse, 1)
	if p := req.GetAppProbe(); p != nil {
		// The first probe runs here, so a bad one is refused rather than
		// reported every period.
		first, err := s.runProbe(ctx, p)
		if err != nil {
			return err
		}
		apps <- first
		go s.probeEvery(ctx, p, period, apps)
	}
	w, leave := s.watch.subscribe()
	defer leave()
	var (
		state *agentv1.WatchResponse // the newest look
		app   *agentv1.ProbeResponse
		sent  *agentv1.WatchResponse
		seq   uint64
	)
	for {
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case state = <-w.states:
		case app = <-apps:
		}
		if state == nil {
			continue // the first look has not come yet
		}
		msg := protoClone(state)
		msg.App = app
		if sent != nil {
			if msg.Changed = changedTopics(sent, msg); len(msg.Changed) == 0 {
				continue
			}
		}
		seq++
		msg.Sequence = seq
		if err := sendBounded(ctx, func() error { return stream.Send(msg) }); err != nil {
			return err
		}
		sent = msg
	}
}

func appProbePeriod(req *agentv1.WatchRequest) (time.Duration, error) {
	if req.AppProbePeriod == nil {
		return defaultAppProbePeriod, nil
	}
	d := req.GetAppProbePeriod().AsDuration()
	if d < minAppProbePeriod || d > maxAppProbePeriod {
		return 0, agenterr.Invalid("watch: app_probe_period %s: want %s to %s", d, minAppProbePeriod, maxAppProbePeriod)
	}
	return d, nil
}

// probeEvery runs the watcher's app probe every period after the first,
// handing each result over (a result not yet taken is replaced by the
// newer one).
func (s *Server) probeEvery(ctx context.Context, p *agentv1.ProbeRequest, period time.Duration, out chan *agentv1.ProbeResponse) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// A probe never outlasts its period, so results keep their pace.
		pctx, cancel := context.WithTimeout(ctx, period)
		res, err := s.runProbe(pctx, p)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			res = &agentv1.ProbeResponse{Error: err.Error()}
		}
		select {
		case <-out:
		default:
		}
		out <- res
	}
}

func protoClone(r *agentv1.WatchResponse) *agentv1.WatchResponse {
	return proto.Clone(r).(*agentv1.WatchResponse)
}
