package vmctl

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/event"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/host/agentwatch"
	"github.com/meshvm/meshvm/pkg/host/onboard"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

// Streams holds one agentwatch stream per MeshVM's agent and turns what
// the agents send into work: a VM-side change (sidecar, app probe,
// certificate, token, addresses, an agent restart) or a stream that drops
// enqueues that MeshVM. The stream is also the AGENT column's source.
//
// Only the leader holds streams: Reconcile opens them (it runs on the
// leader alone) and the manager runs Streams as a leader-election runnable,
// which closes them all when leadership ends. A new leader reopens them as
// it reconciles, paced by the watcher's dial limit with jittered backoff.
type Streams struct {
	watcher *agentwatch.Watcher
	events  chan event.TypedGenericEvent[*v1alpha1.MeshVM]
	// stopped ends sends no source reads any more (leadership over).
	stopped  chan struct{}
	stopOnce sync.Once
	now      func() time.Time

	mu  sync.Mutex
	vms map[types.NamespacedName]*agentLink
}

// agentLink is what the leader knows of one VM's agent from its stream.
type agentLink struct {
	addr string
	tls  *tls.Config
	// known: the stream has said something (connected or not) since Ensure.
	known     bool
	connected bool
	polled    bool
	// since is when the stream last connected or dropped.
	since   time.Time
	version string
	err     string
	last    *agentv1.WatchResponse
	// seen is the status the last pass wrote, for the first message of a
	// stream: it enqueues only when it tells something the pass did not see.
	seen streamSeen
}

type streamSeen struct {
	sidecarActive bool
	version       string
}

// NewStreams returns Streams with the watcher's options (zero: its defaults).
func NewStreams(opts agentwatch.Options) *Streams {
	s := &Streams{events: make(chan event.TypedGenericEvent[*v1alpha1.MeshVM], 1024), vms: map[types.NamespacedName]*agentLink{},
		stopped: make(chan struct{}), now: time.Now}
	s.watcher = agentwatch.New(s.update, opts)
	return s
}

// Start holds the streams until leadership (ctx) ends.
func (s *Streams) Start(ctx context.Context) error {
	<-ctx.Done()
	s.stopOnce.Do(func() { close(s.stopped) })
	s.watcher.Close()
	return nil
}

// NeedLeaderElection: streams are the leader's.
func (*Streams) NeedLeaderElection() bool { return true }

// Events are the MeshVMs to look at again, for a source.Channel.
func (s *Streams) Events() <-chan event.TypedGenericEvent[*v1alpha1.MeshVM] { return s.events }

// ensure watches VM key's agent at addr (its client TLS from tlsFor, asked
// only when a stream is (re)started), probing the app as ws says.
func (s *Streams) ensure(key types.NamespacedName, addr string, ws workload.Spec, seen streamSeen, tlsFor func(string) (*tls.Config, error)) error {
	s.mu.Lock()
	l, ok := s.vms[key]
	if !ok || l.addr != addr {
		s.mu.Unlock()
		cfg, err := tlsFor(addr)
		if err != nil {
			return err
		}
		s.mu.Lock()
		l = &agentLink{addr: addr, tls: cfg}
		s.vms[key] = l
	}
	l.seen = seen
	cfg := l.tls
	s.mu.Unlock()
	s.watcher.Ensure(key.String(), agentwatch.Target{Address: net.JoinHostPort(addr, onboard.AgentPort), TLS: cfg, AppProbe: appProbe(ws)})
	return nil
}

// forget stops watching VM key.
func (s *Streams) forget(key types.NamespacedName) {
	s.watcher.Forget(key.String())
	s.mu.Lock()
	delete(s.vms, key)
	s.mu.Unlock()
}

// appProbe is the group's HTTP probe, run by the agent on the VM's
// loopback, so a failing app reaches the controller as it happens.
func appProbe(ws workload.Spec) *agentv1.ProbeRequest {
	if ws.ProbePort <= 0 {
		return nil
	}
	return &agentv1.ProbeRequest{Kind: agentv1.ProbeKind_PROBE_KIND_HTTP, Port: uint32(ws.ProbePort), Path: ws.ProbePath, Timeout: durationpb.New(3 * time.Second)}
}

// update takes one of the watcher's updates and enqueues the VM when it
// tells a change.
func (s *Streams) update(u agentwatch.Update) {
	ns, name, ok := strings.Cut(u.VM, "/")
	if !ok {
		return
	}
	key := types.NamespacedName{Namespace: ns, Name: name}
	s.mu.Lock()
	l, ok := s.vms[key]
	if !ok {
		s.mu.Unlock()
		return
	}
	enqueue := false
	switch {
	case !u.Connected:
		enqueue = !l.known || l.connected
		if enqueue {
			l.since = s.now()
		}
		l.connected, l.err, l.last = false, fmt.Sprint(u.Err), nil
	case !l.connected:
		// A stream's first message: new to the pass unless it agrees with
		// what the pass wrote (a VM's first stream, opened by its pass).
		first := !l.known
		l.connected, l.polled, l.since, l.err = true, u.Polled, s.now(), ""
		enqueue = !first || !l.seen.agrees(u.State)
	default:
		enqueue = tells(l.last, u.State)
	}
	l.known = true
	if u.State != nil {
		l.last, l.version = u.State, u.State.GetAgentVersion()
	}
	s.mu.Unlock()
	if enqueue {
		select {
		case s.events <- event.TypedGenericEvent[*v1alpha1.MeshVM]{Object: &v1alpha1.MeshVM{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}}:
		case <-s.stopped:
		}
	}
}

func (seen streamSeen) agrees(st *agentv1.WatchResponse) bool {
	return seen.sidecarActive == (st.GetSidecar().GetActiveState() == "active") && seen.version == st.GetAgentVersion()
}

// tells says whether a stream's next message changes what a pass sees.
// The agent sends only on change; a poll of an older agent is compared.
func tells(last, st *agentv1.WatchResponse) bool {
	if last == nil {
		return true
	}
	return !proto.Equal(last.GetSidecar(), st.GetSidecar()) || !proto.Equal(last.GetWorkloadCertificate(), st.GetWorkloadCertificate()) ||
		!proto.Equal(last.GetToken(), st.GetToken()) || !proto.Equal(last.GetApp(), st.GetApp()) ||
		fmt.Sprint(last.GetAddresses()) != fmt.Sprint(st.GetAddresses()) || last.GetAgentVersion() != st.GetAgentVersion() ||
		!last.GetAgentStartedAt().AsTime().Equal(st.GetAgentStartedAt().AsTime())
}

// AgentLink is the leader's view of one VM's agent through its stream.
type AgentLink struct {
	// Known: the stream has told something since it was opened.
	Known, Connected, Polled bool
	Since                    time.Time
	Version, Err             string
}

// link is VM key's stream state.
func (s *Streams) link(key types.NamespacedName) AgentLink {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.vms[key]
	if !ok {
		return AgentLink{}
	}
	return AgentLink{Known: l.known, Connected: l.connected, Polled: l.polled, Since: l.since, Version: l.version, Err: l.err}
}

// Open is how many streams are connected (older agents polled included).
func (s *Streams) Open() (streams, polled int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.vms {
		if l.connected {
			streams++
			if l.polled {
				polled++
			}
		}
	}
	return streams, polled
}

// column is the AGENT column from the stream: "connected v0.20.0 since
// …", "polled v0.18.0 since …" (an agent without watch.v1) or
// "disconnected since …". It changes only on transitions, so status is
// not rewritten while a stream holds.
func (l AgentLink) column() string {
	since := l.Since.UTC().Format(time.RFC3339)
	switch {
	case !l.Known:
		return ""
	case l.Connected && l.Polled:
		return fmt.Sprintf("polled %s since %s", l.Version, since)
	case l.Connected:
		return fmt.Sprintf("connected %s since %s", l.Version, since)
	}
	return "disconnected since " + since
}

// streamRecheck is how soon a VM is looked at again when its stream's
// newest state disagrees with what the pass saw: the agent sends a state,
// not each change, so a sidecar stopped again right after the pass started
// it looks the same as the stop before and sends nothing.
const streamRecheck = 2 * time.Second

// watchAgent keeps the VM's stream open at addr and shows it in the AGENT
// column (once it has told something; until then the pass's own view). It
// returns when to look again because the stream disagrees with the pass
// (0: it agrees).
func (r *Reconciler) watchAgent(vm *v1alpha1.MeshVM, addr string, ws workload.Spec, version string, store *fleetstore.Store) time.Duration {
	if r.Streams == nil {
		return 0
	}
	key := types.NamespacedName{Namespace: vm.Namespace, Name: vm.Name}
	seen := streamSeen{sidecarActive: vm.Status.Sidecar == "active", version: version}
	if err := r.Streams.ensure(key, addr, ws, seen, store.AgentTLS); err != nil {
		// No client identity yet: the pass said why; the next one retries.
		return 0
	}
	if col := r.Streams.link(key).column(); col != "" {
		vm.Status.Agent = col
	}
	if version != "" && r.Streams.disagrees(key) {
		return streamRecheck
	}
	return 0
}

// disagrees says whether VM key's stream, connected, last said otherwise
// than its last pass saw.
func (s *Streams) disagrees(key types.NamespacedName) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.vms[key]
	return ok && l.connected && l.last != nil && !l.seen.agrees(l.last)
}

// forgetAgent closes a VM's stream (deleted, deleting or paused).
func (r *Reconciler) forgetAgent(key types.NamespacedName) {
	if r.Streams != nil {
		r.Streams.forget(key)
	}
}
