package vmcore

import (
	"context"
	"net"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
	istiometa "istio.io/api/meta/v1alpha1"
	clientnetworking "istio.io/client-go/pkg/apis/networking/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshvm/meshvm/pkg/host/onboard"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
)

// machines answers Info from a table: the machine provider is the boundary
// (Multipass, SSH, the lab) the core reaches through.
type machines struct {
	machine.Provider
	m map[string]machine.Machine
}

func (p machines) Info(_ context.Context, name string) (machine.Machine, error) {
	if m, ok := p.m[name]; ok {
		return m, nil
	}
	return machine.Machine{}, machine.ErrNotFound
}

var group = workload.Spec{Namespace: "vmns", Group: "external-app", ServiceAccount: "vmsa", ProbePort: 8000}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// events collects what a pass records, in order.
type events []Event

func (es *events) record(e Event) { *es = append(*es, e) }

func (es events) reasons() []Reason {
	var rs []Reason
	for _, e := range es {
		rs = append(rs, e.Reason)
	}
	return rs
}

func TestMachineThatDoesNotRunEndsThePass(t *testing.T) {
	for _, tc := range []struct {
		name    string
		ms      map[string]machine.Machine
		reason  Reason
		requeue time.Duration
	}{
		{"absent", nil, MachineNotFound, 0},
		{"stopped", map[string]machine.Machine{"vm1": {Name: "vm1", State: machine.Stopped}}, MachineNotRunning, 0},
		{"running without an address", map[string]machine.Machine{"vm1": {Name: "vm1", State: machine.Running}}, MachineNoAddress, agentRequeue},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store, _ := openStore(t, "vm1")
			var got events
			res, err := Reconcile(testCtx(t), Spec{Name: "vm1", Generation: 1, RunsApp: true}, Status{}, Target{}, store,
				Deps{Machines: machines{m: tc.ms}, Record: got.record})
			if err != nil {
				t.Fatal(err)
			}
			c, _ := res.Status.Conditions.Get(Machine)
			if c.Status != False || c.Reason != tc.reason || res.Done || res.RequeueAfter != tc.requeue {
				t.Errorf("got %+v done %v requeue %s, want False %s requeue %s", c, res.Done, res.RequeueAfter, tc.reason, tc.requeue)
			}
			if ready, _ := res.Status.Conditions.Get(Ready); ready.Status != False || ready.Reason != tc.reason {
				t.Errorf("Ready: got %+v, want False %s", ready, tc.reason)
			}
			if _, ok := res.Status.Conditions.Get(AgentReachable); ok || len(got) != 0 {
				t.Errorf("the pass went on past the machine: %+v, events %v", res.Status.Conditions, got)
			}
		})
	}
}

// An agent that does not answer is a condition with its cause, looked at
// again soon: the core does not wait for it to start.
func TestUnreachableAgentIsRequeuedNotWaitedFor(t *testing.T) {
	store, _ := openStore(t, "vm1")
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lis.Close() // nothing listens there now
	addr := "127.0.0.1"
	if l, err := net.Listen("tcp", net.JoinHostPort(addr, onboard.AgentPort)); err != nil {
		t.Skipf("the agent port on %s is taken here: %v", addr, err)
	} else {
		l.Close()
	}
	ms := machines{m: map[string]machine.Machine{"vm1": {Name: "vm1", State: machine.Running, Addresses: []string{addr}}}}
	start := time.Now()
	res, err := Reconcile(testCtx(t), Spec{Name: "vm1", Generation: 1}, Status{}, Target{}, store, Deps{Machines: ms})
	if err != nil {
		t.Fatal(err)
	}
	c, _ := res.Status.Conditions.Get(AgentReachable)
	if c.Status != False || c.Reason != AgentUnreachable || res.Cause == nil || res.RequeueAfter != agentRequeue {
		t.Errorf("got %+v cause %v requeue %s, want Unreachable with its cause, requeued", c, res.Cause, res.RequeueAfter)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the pass took %s: it waited for the agent", took)
	}
	if m, _ := res.Status.Conditions.Get(Machine); m.Status != True || m.Message != "running at "+addr {
		t.Errorf("machine: got %+v", m)
	}
}

func entryAt(name, address, connectedAt, healthy string, probed time.Time) *clientnetworking.WorkloadEntry {
	we := &clientnetworking.WorkloadEntry{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: group.Namespace,
		Annotations: map[string]string{"istio.io/autoRegistrationGroup": group.Group, "istio.io/connectedAt": connectedAt}}}
	we.Spec.Address = address
	we.Status.Conditions = []*istiometa.IstioCondition{{Type: "Healthy", Status: healthy, Message: "probe says " + healthy, LastProbeTime: timestamppb.New(probed)}}
	return we
}

// syncedStatus is the status of a VM whose files an earlier pass of this
// generation delivered at addr: passes now only look at its entry.
func syncedStatus(addr string) Status {
	var st Status
	st.Address = addr
	for t, r := range map[ConditionType]Reason{Machine: MachineRunning, AgentReachable: AgentAnswering, Credentials: TokenBound,
		FilesInSync: FilesSent, SidecarRunning: SidecarRestarted} {
		st.Conditions.Set(Condition{Type: t, Status: True, Reason: r, ObservedGeneration: 1}, time.Now())
	}
	return st
}

func TestEntryStepsFollowTheWorkloadEntry(t *testing.T) {
	ctx := testCtx(t)
	probed := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name      string
		runsApp   bool
		proxyless bool
		entries   []*clientnetworking.WorkloadEntry
		restart   *Restart
		// what the Healthy condition says and whether the VM is done
		healthy Reason
		done    bool
	}{
		{name: "no entry yet", runsApp: true, healthy: NoEntry},
		{name: "healthy", runsApp: true, entries: []*clientnetworking.WorkloadEntry{entryAt("e1", "10.0.0.7", "c1", "True", probed)},
			healthy: EntryHealthy, done: true},
		{name: "not healthy yet", runsApp: true, entries: []*clientnetworking.WorkloadEntry{entryAt("e1", "10.0.0.7", "c1", "False", probed)},
			healthy: EntryNotHealthy},
		{name: "healthy from before the restart", runsApp: true, entries: []*clientnetworking.WorkloadEntry{entryAt("e1", "10.0.0.7", "c1", "True", probed)},
			restart: &Restart{EntryBeforeRestart: "e1", EntryConnectedAt: "c1", EntryProbedAt: probed}, healthy: NotReconnected},
		{name: "reconnected but no health report since", runsApp: true, entries: []*clientnetworking.WorkloadEntry{entryAt("e1", "10.0.0.7", "c2", "True", probed)},
			restart: &Restart{EntryBeforeRestart: "e1", EntryConnectedAt: "c1", EntryProbedAt: probed}, healthy: NotReconnected},
		{name: "reconnected and reported", runsApp: true, entries: []*clientnetworking.WorkloadEntry{entryAt("e1", "10.0.0.7", "c2", "True", probed.Add(time.Second))},
			restart: &Restart{EntryBeforeRestart: "e1", EntryConnectedAt: "c1", EntryProbedAt: probed}, healthy: EntryHealthy, done: true},
		{name: "own app: registered is enough", entries: []*clientnetworking.WorkloadEntry{entryAt("e1", "10.0.0.7", "c1", "False", probed)},
			healthy: WaitsOnOwnApp, done: true},
		{name: "own app: the old connection is not", entries: []*clientnetworking.WorkloadEntry{entryAt("e1", "10.0.0.7", "c1", "False", probed)},
			restart: &Restart{EntryBeforeRestart: "e1", EntryConnectedAt: "c1", EntryProbedAt: probed}, healthy: EntryNotHealthy},
		{name: "proxyless: no entry until the gRPC app connects", proxyless: true, healthy: WaitsOnGRPCApp, done: true},
		{name: "proxyless: registered, the app's probe failing", proxyless: true, entries: []*clientnetworking.WorkloadEntry{entryAt("e1", "10.0.0.7", "c1", "False", probed)},
			healthy: WaitsOnGRPCApp, done: true},
		{name: "proxyless: healthy", proxyless: true, entries: []*clientnetworking.WorkloadEntry{entryAt("e1", "10.0.0.7", "c1", "True", probed)},
			healthy: EntryHealthy, done: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store, _ := openStore(t, "vm1")
			if tc.restart != nil {
				if err := store.SetLastRestart("vm1", *tc.restart); err != nil {
					t.Fatal(err)
				}
			}
			ic := istiofake.NewSimpleClientset()
			for _, we := range tc.entries {
				if _, err := ic.NetworkingV1().WorkloadEntries(group.Namespace).Create(ctx, we, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			var got events
			deps := Deps{Machines: machines{}, Kube: workload.Clients{Kube: fake.NewClientset(), Istio: ic}, Workload: group, Record: got.record}
			res, err := Reconcile(ctx, Spec{Name: "vm1", Generation: 1, RunsApp: tc.runsApp, Proxyless: tc.proxyless, ProbePort: 8000}, syncedStatus("10.0.0.7"), Target{}, store, deps)
			if err != nil {
				t.Fatal(err)
			}
			c, _ := res.Status.Conditions.Get(Healthy)
			if c.Reason != tc.healthy || res.Done != tc.done {
				t.Errorf("got Healthy %+v done %v, want %s done %v", c, res.Done, tc.healthy, tc.done)
			}
			// Ready sums it up: True when done, else the reason holding the VM back.
			ready, _ := res.Status.Conditions.Get(Ready)
			switch {
			case tc.done && (ready.Status != True || ready.Reason != InMesh):
				t.Errorf("done but Ready %+v", ready)
			case !tc.done && (ready.Status != False || ready.Reason == InMesh || ready.Reason == NotObserved):
				t.Errorf("not done but Ready %+v, want False with the reason holding it back", ready)
			}
			addr, _ := store.Address("vm1")
			if tc.done != (addr == "10.0.0.7") {
				t.Errorf("recorded address %q with done %v: the address is recorded once the VM is onboarded", addr, tc.done)
			}
			if !tc.done && res.RequeueAfter == 0 {
				t.Errorf("not done and no requeue: nothing would look again")
			}
			if tc.done && !slices.Contains(got.reasons(), tc.healthy) {
				t.Errorf("events %v, want %s told", got.reasons(), tc.healthy)
			}
		})
	}
}

// A VM onboarded at a new address deletes the entry it left at the old one,
// unless another VM holds that address now.
func TestAddressMovedDeletesTheStaleEntry(t *testing.T) {
	ctx := testCtx(t)
	probed := time.Now()
	for _, tc := range []struct {
		name      string
		holder    bool
		reason    Reason
		staleLeft bool
	}{
		{"old address free", false, StaleEntryDeleted, false},
		{"old address taken by vm2", true, AddressHeld, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store, _ := openStore(t, "vm1", "vm2")
			if err := store.SetAddress("vm1", "10.0.0.5"); err != nil {
				t.Fatal(err)
			}
			if tc.holder {
				if err := store.SetAddress("vm2", "10.0.0.5"); err != nil {
					t.Fatal(err)
				}
			}
			ic := istiofake.NewSimpleClientset(entryAt("old", "10.0.0.5", "c0", "True", probed), entryAt("new", "10.0.0.7", "c1", "True", probed))
			var got events
			deps := Deps{Kube: workload.Clients{Kube: fake.NewClientset(), Istio: ic}, Workload: group, Record: got.record}
			res, err := Reconcile(ctx, Spec{Name: "vm1", Generation: 1, RunsApp: true}, syncedStatus("10.0.0.7"), Target{}, store, deps)
			if err != nil {
				t.Fatal(err)
			}
			c, _ := res.Status.Conditions.Get(AddressMoved)
			if c.Reason != tc.reason || !res.Done {
				t.Errorf("got %+v done %v, want %s", c, res.Done, tc.reason)
			}
			_, err = ic.NetworkingV1().WorkloadEntries(group.Namespace).Get(ctx, "old", metav1.GetOptions{})
			if left := err == nil; left != tc.staleLeft {
				t.Errorf("stale entry left: %v, want %v", left, tc.staleLeft)
			}
			if addr, _ := store.Address("vm1"); addr != "10.0.0.7" {
				t.Errorf("address recorded: %q", addr)
			}
			told := slices.ContainsFunc(got, func(e Event) bool {
				return e.Reason == StaleEntryDeleted && e.Object == "old" && strings.Contains(e.Message, "from 10.0.0.5")
			})
			if told == tc.staleLeft {
				t.Errorf("events %+v: the deletion told %v, want %v", got, told, !tc.staleLeft)
			}
		})
	}
}

// A synced VM's pass looks only at its entry, unless Recheck: then it
// looks at the agent again (a controller's periodic look, which repairs
// drift), and an agent gone since is seen.
func TestRecheckLooksAtTheAgentAgain(t *testing.T) {
	addr := "127.0.0.1"
	if l, err := net.Listen("tcp", net.JoinHostPort(addr, onboard.AgentPort)); err != nil {
		t.Skipf("the agent port on %s is taken here: %v", addr, err)
	} else {
		l.Close()
	}
	store, _ := openStore(t, "vm1")
	ms := machines{m: map[string]machine.Machine{"vm1": {Name: "vm1", State: machine.Running, Addresses: []string{addr}}}}
	deps := Deps{Machines: ms, Kube: workload.Clients{Kube: fake.NewClientset(), Istio: istiofake.NewSimpleClientset()}, Workload: group}
	for _, recheck := range []bool{false, true} {
		res, err := Reconcile(testCtx(t), Spec{Name: "vm1", Generation: 1, Recheck: recheck}, syncedStatus(addr), Target{}, store, deps)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := res.Status.Conditions.Get(AgentReachable)
		if got := c.Status == False; got != recheck {
			t.Errorf("Recheck %v: AgentReachable %+v", recheck, c)
		}
	}
}

// A look again at a VM still at its address changes nothing of
// AddressMoved: one first onboarded there keeps FirstAddress (a periodic
// look that turned it into Unchanged rewrote every MeshVM's status at
// rest), one that moved before keeps Unchanged.
func TestStillAtItsAddressKeepsAddressMoved(t *testing.T) {
	ctx := testCtx(t)
	probed := time.Now()
	for _, was := range []Condition{
		{Type: AddressMoved, Status: False, Reason: AddressFirst, Message: "first onboarded at 10.0.0.7", ObservedGeneration: 1},
		{Type: AddressMoved, Status: False, Reason: AddressUnchanged, Message: "still at 10.0.0.7", ObservedGeneration: 1},
	} {
		t.Run(string(was.Reason), func(t *testing.T) {
			store, _ := openStore(t, "vm1")
			if err := store.SetAddress("vm1", "10.0.0.7"); err != nil {
				t.Fatal(err)
			}
			st := syncedStatus("10.0.0.7")
			st.Conditions.Set(was, time.Now().Add(-time.Hour))
			before, _ := st.Conditions.Get(AddressMoved)
			ic := istiofake.NewSimpleClientset(entryAt("e1", "10.0.0.7", "c1", "True", probed))
			deps := Deps{Kube: workload.Clients{Kube: fake.NewClientset(), Istio: ic}, Workload: group}
			res, err := Reconcile(ctx, Spec{Name: "vm1", Generation: 1, RunsApp: true}, st, Target{}, store, deps)
			if err != nil {
				t.Fatal(err)
			}
			if c, _ := res.Status.Conditions.Get(AddressMoved); !reflect.DeepEqual(c, before) {
				t.Errorf("AddressMoved %+v, was %+v", c, before)
			}
		})
	}
}
