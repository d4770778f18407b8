//go:build linux

package vmctl

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
)

// passCounter counts the controller's passes per MeshVM: a pass starts by
// reading its MeshVM (Reconcile's Get), nothing else reads one by key.
type passCounter struct {
	client.Client
	mu     sync.Mutex
	passes map[types.NamespacedName]int
}

func (p *passCounter) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if _, ok := obj.(*v1alpha1.MeshVM); ok {
		p.mu.Lock()
		p.passes[key]++
		p.mu.Unlock()
	}
	return p.Client.Get(ctx, key, obj, opts...)
}

func (p *passCounter) snapshot() map[types.NamespacedName]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.passes)
}

// A change to a WorkloadGroup, the fleet settings, the mesh config or a
// namespace's root certificate (objects the passes read from the cache,
// not from the API server) looks again at the MeshVMs it reaches, and
// only those: a group's change its own VMs (not a same-named group's in
// another namespace, nor another group's), the settings and the mesh
// config every VM, a root certificate its namespace's VMs, any other
// ConfigMap none. A WorkloadGroup created after the start reaches the VM
// that waited for it. The real controller (manager, cache, watches, work
// queue) on the real API server; the VMs have no address, so each pass
// ends at NoAddress and the resync (an hour) never comes.
func TestCachedChangesReachTheirVMs(t *testing.T) {
	rc := replicaAPI(t)
	ctx := context.Background()
	storeNS, spec, _, c := fleetFor(t, rc)
	ns1, group := spec.Namespace, spec.Group
	// A second namespace with a group of the same name, and a second group in the first.
	spec2 := spec
	spec2.Namespace = ns1 + "b"
	other := spec
	other.Group = "other"
	for _, s := range []workload.Spec{spec2, other} {
		if _, err := workload.Ensure(ctx, c, s); err != nil {
			t.Fatal(err)
		}
	}
	ns2 := spec2.Namespace
	ca, err := fleetstore.New(ctx, c.Kube, storeNS, ns1).CA()
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{ns1, ns2} {
		if _, err := c.Kube.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: RootCertConfigMap},
			Data: map[string]string{"root-cert.pem": string(ca.CertPEM())}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	if _, err := c.Kube.CoreV1().ConfigMaps(storeNS).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "unrelated"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	scheme := k8sruntime.NewScheme()
	for _, add := range []func(*k8sruntime.Scheme) error{clientgoscheme.AddToScheme, v1alpha1.AddToScheme, networkingv1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	cl, err := client.New(rc, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	vm := func(ns, name, group string) types.NamespacedName {
		app := false
		m := &v1alpha1.MeshVM{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: v1alpha1.MeshVMSpec{WorkloadGroup: group, App: &app}}
		if err := cl.Create(ctx, m); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cl.Patch(ctx, m, client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`)))
			cl.Delete(ctx, m)
		})
		return client.ObjectKeyFromObject(m)
	}
	a1, a2, b1, c1 := vm(ns1, "a1", group), vm(ns1, "a2", group), vm(ns1, "b1", other.Group), vm(ns2, "c1", group)
	late := vm(ns1, "d1", "late")
	all := []types.NamespacedName{a1, a2, b1, c1, late}

	// The controller as main makes it, its cache limited to this run's
	// namespaces (the runs before it, go test -count, left theirs).
	scope := Scope{Namespace: storeNS, IstioNamespace: "istio-system", WorkloadNamespaces: []string{ns1, ns2}}
	opts := scope.CacheOptions()
	opts.DefaultNamespaces = map[string]cache.Config{ns1: {}, ns2: {}}
	skip := true
	mgr, err := ctrl.NewManager(rc, ctrl.Options{Scheme: scheme, Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
		Cache: opts, Controller: config.Controller{SkipNameValidation: &skip}})
	if err != nil {
		t.Fatal(err)
	}
	counter := &passCounter{Client: mgr.GetClient(), passes: map[types.NamespacedName]int{}}
	r := &Reconciler{Client: counter, Kube: c, Namespace: storeNS, Resync: time.Hour, ReleaseAfter: time.Minute, Scope: scope}
	if err := r.SetupWithManager(mgr, 2); err != nil {
		t.Fatal(err)
	}
	mctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- mgr.Start(mctx) }()
	t.Cleanup(func() { cancel(); <-done })

	reason := func(key types.NamespacedName) string {
		var m v1alpha1.MeshVM
		if err := cl.Get(ctx, key, &m); err != nil {
			return err.Error()
		}
		if c := findCondition(m.Status.Conditions, v1alpha1.ConditionReady); c != nil {
			return c.Reason
		}
		return ""
	}
	// Every VM looked at once, and settled.
	for _, key := range all {
		want := ReasonNoAddress
		if key == late {
			want = ReasonWorkloadGroupNotFound
		}
		eventually(t, 30*time.Second, fmt.Sprintf("%s Ready=False %s", key, want), func() bool { return reason(key) == want })
	}
	base := settled(t, counter)

	// reaches makes a change and checks which VMs it looked at again.
	reaches := func(what string, change func() error, want ...types.NamespacedName) {
		t.Helper()
		if err := change(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		for _, key := range want {
			eventually(t, 30*time.Second, what+" reaches "+key.String(), func() bool { return counter.snapshot()[key] > base[key] })
		}
		now := settled(t, counter)
		for _, key := range all {
			if got := now[key] > base[key]; got != slices.Contains(want, key) {
				t.Errorf("%s: %s looked at again: %v, want %v (passes %d → %d)", what, key, got, !got, base[key], now[key])
			}
		}
		base = now
	}
	touched := 0
	touch := func(obj client.Object) func() error {
		return func() error {
			touched++
			return cl.Patch(ctx, obj, client.RawPatch(types.MergePatchType, fmt.Appendf(nil, `{"metadata":{"annotations":{"meshvm.test/touched":"%d"}}}`, touched)))
		}
	}
	cm := func(ns, name string) *corev1.ConfigMap {
		return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	}
	reaches("WorkloadGroup "+ns1+"/"+group+" changed", touch(&networkingv1.WorkloadGroup{ObjectMeta: metav1.ObjectMeta{Namespace: ns1, Name: group}}), a1, a2)
	reaches("WorkloadGroup "+ns1+"/other changed", touch(&networkingv1.WorkloadGroup{ObjectMeta: metav1.ObjectMeta{Namespace: ns1, Name: other.Group}}), b1)
	reaches("the fleet settings changed", func() error {
		_, err := fleetstore.PutSettings(ctx, c.Kube, storeNS, fleetstore.Settings{ClusterID: "replicas", IstiodAddress: "127.0.0.2",
			IstiodVersions: map[string]string{"default": "1.31.0"}})
		return err
	}, all...)
	reaches("another ConfigMap of the store's namespace changed", touch(cm(storeNS, "unrelated")))
	reaches("the root certificate of "+ns2+" changed", touch(cm(ns2, RootCertConfigMap)), c1)
	reaches("the mesh config changed", touch(cm("istio-system", "istio")), all...)
	late2 := spec
	late2.Group = "late"
	reaches("WorkloadGroup "+ns1+"/late created", func() error { _, err := workload.Ensure(ctx, c, late2); return err }, late)
	eventually(t, 30*time.Second, late.String()+" past WorkloadGroupNotFound", func() bool { return reason(late) == ReasonNoAddress })
}

// settled is the pass counts once they stopped moving (no pass for a second).
func settled(t *testing.T, p *passCounter) map[types.NamespacedName]int {
	t.Helper()
	last := p.snapshot()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		time.Sleep(time.Second)
		now := p.snapshot()
		if maps.Equal(now, last) {
			return now
		}
		last = now
	}
	t.Fatalf("passes never settled: %v", last)
	return nil
}

func eventually(t *testing.T, within time.Duration, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(within); !ok(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, within)
		}
	}
}
