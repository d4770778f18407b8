package vmctl

import (
	"context"
	"strings"
	"testing"
	"time"

	networkingapi "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	kubefake "k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/pkg/credinfo"
	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/mesh/ownership"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
)

type fixture struct {
	r      *Reconciler
	client client.Client
	kube   *kubefake.Clientset
	events *events.FakeRecorder
	now    time.Time
}

func newFixture(t *testing.T, vms ...*v1alpha1.MeshVM) *fixture {
	t.Helper()
	scheme := runtime.NewScheme()
	v1alpha1.AddToScheme(scheme)
	networkingv1.AddToScheme(scheme)
	objs := make([]client.Object, len(vms))
	for i, vm := range vms {
		objs[i] = vm
	}
	f := &fixture{now: time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC), events: events.NewFakeRecorder(100)}
	f.client = fake.NewClientBuilder().WithScheme(scheme).WithObjects(objs...).WithStatusSubresource(&v1alpha1.MeshVM{}).Build()
	f.kube = kubefake.NewClientset(&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fleetstore.SettingsConfigMap, Namespace: fleetstore.DefaultNamespace},
		Data: map[string]string{"clusterID": "c1", "istiodAddress": "10.0.0.1", "istiodVersions": `{"default":"1.31.0"}`}})
	wg := &networkingv1.WorkloadGroup{ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: "vmns"},
		Spec: networkingapi.WorkloadGroup{Template: &networkingapi.WorkloadEntry{ServiceAccount: "app-sa"}}}
	f.r = &Reconciler{Client: f.client, Kube: workload.Clients{Kube: f.kube, Istio: istiofake.NewSimpleClientset(wg)}, Namespace: fleetstore.DefaultNamespace,
		Events: f.events, Sidecars: &Sidecars{}, Resync: time.Minute, ReleaseAfter: 5 * time.Minute, Now: func() time.Time { return f.now }}
	return f
}

func meshVM(name string, mutate func(*v1alpha1.MeshVM)) *v1alpha1.MeshVM {
	m := &v1alpha1.MeshVM{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "vmns", UID: types.UID("uid-" + name), Generation: 1},
		Spec: v1alpha1.MeshVMSpec{Address: "127.0.0.9", WorkloadGroup: "app"}}
	if mutate != nil {
		mutate(m)
	}
	return m
}

func (f *fixture) reconcile(t *testing.T, name string) (ctrl.Result, v1alpha1.MeshVM, error) {
	t.Helper()
	res, err := f.r.Reconcile(context.Background(), ctrl.Request{NamespacedName: types.NamespacedName{Namespace: "vmns", Name: name}})
	var vm v1alpha1.MeshVM
	f.client.Get(context.Background(), types.NamespacedName{Namespace: "vmns", Name: name}, &vm)
	return res, vm, err
}

func (f *fixture) drainEvents() []string {
	var out []string
	for {
		select {
		case e := <-f.events.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

// A bad spec is reported on Ready with the fix, and looked at again on
// the periodic look, not in a hot loop; a second pass writes nothing.
func TestBadSpecsReportedWithTheFix(t *testing.T) {
	f := newFixture(t,
		meshVM("nogroup", func(m *v1alpha1.MeshVM) { m.Spec.WorkloadGroup = "nope" }),
		meshVM("norev", func(m *v1alpha1.MeshVM) { m.Spec.Revision = "canary" }))
	for name, want := range map[string]string{"nogroup": "WorkloadGroupNotFound", "norev": "RevisionNotRunning"} {
		res, vm, err := f.reconcile(t, name)
		if err != nil || res.RequeueAfter < 50*time.Second {
			t.Errorf("%s: got %v, requeue %s; want no error and the periodic look", name, err, res.RequeueAfter)
		}
		c := findCondition(vm.Status.Conditions, "Ready")
		if c == nil || c.Status != metav1.ConditionFalse || c.Reason != want || !strings.Contains(c.Message, "spec.") {
			t.Errorf("%s: Ready %+v, want False %s naming the spec field to fix", name, c, want)
		}
		if vm.Status.ObservedGeneration != 1 || len(vm.Finalizers) != 1 {
			t.Errorf("%s: observedGeneration %d, finalizers %v", name, vm.Status.ObservedGeneration, vm.Finalizers)
		}
		rv := vm.ResourceVersion
		f.now = f.now.Add(time.Minute)
		_, again, _ := f.reconcile(t, name)
		if again.ResourceVersion != rv {
			t.Errorf("%s: a pass that found nothing new wrote the MeshVM", name)
		}
	}
	ready := 0
	for _, e := range f.drainEvents() {
		if strings.Contains(e, "Ready False") {
			ready++
		}
	}
	if ready != 2 {
		t.Errorf("%d Ready events, want one per bad MeshVM's transition", ready)
	}
}

// An agent that does not answer leaves AgentReachable False and an error,
// so the work queue backs off per VM.
func TestUnreachableAgentBacksOff(t *testing.T) {
	f := newFixture(t, meshVM("vm1", nil))
	_, vm, err := f.reconcile(t, "vm1")
	if err == nil {
		t.Fatal("no error for an agent that does not answer: the queue would not back off")
	}
	c := findCondition(vm.Status.Conditions, string(vmcore.AgentReachable))
	r := findCondition(vm.Status.Conditions, "Ready")
	if c == nil || c.Status != metav1.ConditionFalse || r == nil || r.Status != metav1.ConditionFalse || vm.Status.Agent != "unreachable" {
		t.Errorf("conditions %+v, agent %q", vm.Status.Conditions, vm.Status.Agent)
	}
}

// Deleting a MeshVM never onboarded releases it at once; one whose agent
// does not answer waits, saying so, and is released after ReleaseAfter
// with an Event that says what stays on the VM. Both tokens are revoked.
func TestFinalizer(t *testing.T) {
	deleting := func(m *v1alpha1.MeshVM) {
		m.Finalizers = []string{v1alpha1.Finalizer}
		m.DeletionTimestamp = &metav1.Time{Time: time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)}
	}
	f := newFixture(t, meshVM("never", deleting), meshVM("gone", deleting))
	for _, vm := range []string{"never", "gone"} {
		f.kube.CoreV1().Secrets("vmns").Create(context.Background(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: workload.CredentialName(vm), Namespace: "vmns", Labels: ownership.Labels(nil)}}, metav1.CreateOptions{})
	}
	store := fleetstore.New(context.Background(), f.kube, "", "vmns")
	if err := store.SetAddress("gone", "127.0.0.9"); err != nil {
		t.Fatal(err)
	}
	if _, vm, err := f.reconcile(t, "never"); err != nil || vm.Name != "" {
		t.Errorf("a MeshVM never onboarded: %v, still there: %+v", err, vm.ObjectMeta)
	}
	f.now = f.now.Add(time.Minute)
	res, vm, err := f.reconcile(t, "gone")
	if c := findCondition(vm.Status.Conditions, "Ready"); err != nil || res.RequeueAfter == 0 || c == nil || c.Reason != ReasonAgentGone {
		t.Errorf("an agent that does not answer: %v, requeue %s, Ready %+v", err, res.RequeueAfter, c)
	}
	f.now = f.now.Add(5 * time.Minute)
	if _, vm, err := f.reconcile(t, "gone"); err != nil || vm.Name != "" {
		t.Errorf("after ReleaseAfter: %v, still there", err)
	}
	released := false
	for _, e := range f.drainEvents() {
		released = released || (strings.Contains(e, ReasonReleased) && strings.Contains(e, "hostctl vm rm gone"))
	}
	if !released {
		t.Error("no Released event naming what to run")
	}
	for _, vm := range []string{"never", "gone"} {
		if _, err := f.kube.CoreV1().Secrets("vmns").Get(context.Background(), workload.CredentialName(vm), metav1.GetOptions{}); err == nil {
			t.Errorf("%s: token Secret left: not revoked", vm)
		}
	}
	if a, _ := fleetstore.New(context.Background(), f.kube, "", "vmns").Address("gone"); a != "" {
		t.Error("records left after the release")
	}
}

// Rotation falls at 40-50 % of a token's life, fixed per VM.
func TestRotationDue(t *testing.T) {
	iat := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	tok := credinfo.Token{IssuedAt: iat, ExpiresAt: iat.Add(10 * time.Minute)}
	seen := map[time.Time]bool{}
	for _, uid := range []string{"a", "b", "c", "d", "e", "f"} {
		due := rotationDue(tok, uid)
		if due.Before(iat.Add(4*time.Minute)) || due.After(iat.Add(5*time.Minute)) {
			t.Errorf("uid %s: due %s after issue, want 4m to 5m", uid, due.Sub(iat))
		}
		if !due.Equal(rotationDue(tok, uid)) {
			t.Errorf("uid %s: due moves between calls", uid)
		}
		seen[due] = true
	}
	if len(seen) < 4 {
		t.Errorf("six VMs share %d rotation times: no jitter", len(seen))
	}
}

// The status the core returns maps onto the MeshVM and back unchanged,
// so an unchanged pass writes nothing.
func TestStatusRoundTrip(t *testing.T) {
	at := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	cs := vmcore.Status{Address: "10.0.0.7", Revision: "", Istio: "1.31.0"}
	for _, c := range []vmcore.ConditionType{vmcore.AgentReachable, vmcore.Credentials, vmcore.Healthy, vmcore.Ready} {
		cs.Conditions.Set(vmcore.Condition{Type: c, Status: vmcore.True, Reason: "R", Message: "m", ObservedGeneration: 2}, at)
	}
	var st v1alpha1.MeshVMStatus
	applyCore(&st, cs)
	if findCondition(st.Conditions, v1alpha1.ConditionCredentialsValid) == nil || st.Revision != "default" {
		t.Errorf("status %+v", st)
	}
	again := st.DeepCopy()
	applyCore(again, coreStatus(st))
	if len(again.Conditions) != len(st.Conditions) {
		t.Fatalf("conditions %d, then %d", len(st.Conditions), len(again.Conditions))
	}
	for i := range st.Conditions {
		if st.Conditions[i] != again.Conditions[i] {
			t.Errorf("condition %d changed on a round trip: %+v -> %+v", i, st.Conditions[i], again.Conditions[i])
		}
	}
}

// A paused VM is neither acted on nor looked at, and says so.
func TestPaused(t *testing.T) {
	f := newFixture(t, meshVM("vm1", func(m *v1alpha1.MeshVM) { m.Spec.Paused = true }))
	res, vm, err := f.reconcile(t, "vm1")
	if c := findCondition(vm.Status.Conditions, ConditionPaused); err != nil || res.RequeueAfter != 0 || c == nil || c.Status != metav1.ConditionTrue {
		t.Errorf("paused: %v, requeue %s, conditions %+v", err, res.RequeueAfter, vm.Status.Conditions)
	}
	if c := findCondition(vm.Status.Conditions, string(vmcore.AgentReachable)); c != nil {
		t.Errorf("a paused VM's agent was called: %+v", c)
	}
}

// Events are few: Ready's transitions (not its first: onboarded, or
// waiting on istiod's registration), a condition leaving True, a move.
func TestEventsOnlyForMeaningfulTransitions(t *testing.T) {
	c := func(typ string, st metav1.ConditionStatus, reason string) *metav1.Condition {
		return &metav1.Condition{Type: typ, Status: st, Reason: reason}
	}
	ready, sidecar := v1alpha1.ConditionReady, string(vmcore.SidecarRunning)
	for _, tc := range []struct {
		was, now *metav1.Condition
		kind     string
	}{
		{nil, c(ready, metav1.ConditionFalse, string(vmcore.NoEntry)), ""},
		{nil, c(ready, metav1.ConditionFalse, ReasonWorkloadGroupNotFound), "Warning"},
		{nil, c(ready, metav1.ConditionTrue, "InMesh"), ""},
		{c(ready, metav1.ConditionFalse, string(vmcore.NoEntry)), c(ready, metav1.ConditionTrue, "InMesh"), "Normal"},
		{c(ready, metav1.ConditionTrue, "InMesh"), c(ready, metav1.ConditionTrue, "InMesh"), ""},
		{nil, c(sidecar, metav1.ConditionFalse, "x"), ""},
		{c(sidecar, metav1.ConditionFalse, "x"), c(sidecar, metav1.ConditionTrue, "y"), ""},
		{c(sidecar, metav1.ConditionTrue, "y"), c(sidecar, metav1.ConditionFalse, "x"), "Warning"},
		{c(string(vmcore.AddressMoved), metav1.ConditionFalse, "a"), c(string(vmcore.AddressMoved), metav1.ConditionTrue, "b"), "Normal"},
		// Drift put right on a VM that was in order: told.
		{c(sidecar, metav1.ConditionTrue, string(vmcore.SidecarStarted)), c(sidecar, metav1.ConditionTrue, string(vmcore.SidecarRestarted)), "Normal"},
		{c(string(vmcore.FilesInSync), metav1.ConditionTrue, string(vmcore.FilesInPlace)), c(string(vmcore.FilesInSync), metav1.ConditionTrue, string(vmcore.FilesSent)), "Normal"},
		// Onboarding's first start and first delivery: not a repair.
		{nil, c(sidecar, metav1.ConditionTrue, string(vmcore.SidecarRestarted)), ""},
		{c(string(vmcore.FilesInSync), metav1.ConditionUnknown, string(vmcore.NotObserved)), c(string(vmcore.FilesInSync), metav1.ConditionTrue, string(vmcore.FilesSent)), ""},
	} {
		kind, ok := eventOf(tc.was, *tc.now)
		if kind != tc.kind || ok != (tc.kind != "") {
			t.Errorf("%+v -> %+v: event %q %v, want %q", tc.was, tc.now, kind, ok, tc.kind)
		}
	}
}
