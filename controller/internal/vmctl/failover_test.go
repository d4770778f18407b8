//go:build linux

package vmctl

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/yaml"

	"github.com/meshvm/meshvm/api/meshvm/crd"
	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/lab/build"
	"github.com/meshvm/meshvm/lab/cluster"
	"github.com/meshvm/meshvm/lab/labtest"
	"github.com/meshvm/meshvm/pkg/agentspec"
	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/host/agentwatch"
	"github.com/meshvm/meshvm/pkg/mesh/autoregsim"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
	"github.com/meshvm/meshvm/vmagent/agentsim"

	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
)

// The replicas' tests share one control plane per test process (go test
// -count=100 starts it once), on ports of their own: they run beside the
// lab tests without the lab's lock. Each run has its own namespaces.
var (
	apiOnce sync.Once
	apiRC   *rest.Config
	apiErr  error
	apiDir  string
	runs    atomic.Int32
)

func TestMain(m *testing.M) {
	ctrl.SetLogger(zap.New(zap.WriteTo(io.Discard)))
	code := m.Run()
	if apiDir != "" {
		cluster.Down(context.Background(), apiDir)
		os.RemoveAll(apiDir)
	}
	os.Exit(code)
}

// replicaAPI is the shared API server with the MeshVM CRD, started on first use.
func replicaAPI(t *testing.T) *rest.Config {
	t.Helper()
	labtest.RequireBuild(t)
	apiOnce.Do(func() {
		ctx := context.Background()
		bins, err := build.Build(ctx, build.Options{ModuleDir: labtest.ModuleDir, CacheDir: labtest.Cache(), Progress: os.Stderr})
		if err != nil {
			apiErr = err
			return
		}
		if apiDir, apiErr = os.MkdirTemp("", "vmctl-replicas-"); apiErr != nil {
			return
		}
		if apiErr = cluster.Up(ctx, cluster.Config{Dir: apiDir, APIServer: bins.Path("kube-apiserver"), ControllerManager: bins.Path("kube-controller-manager"),
			// Apart from the other tests' API servers (30443, 30543), every lab instance's block (24000-30399) and the kernel's ephemeral ports (32768 up).
			Ports: cluster.Ports{API: 31443, Etcd: 31790, EtcdPeer: 31800, Controller: 31357}}); apiErr != nil {
			return
		}
		if apiRC, apiErr = clientcmd.BuildConfigFromFlags("", cluster.Kubeconfig(apiDir)); apiErr != nil {
			return
		}
		apiErr = installAPIs(ctx, apiRC)
	})
	if apiErr != nil {
		t.Fatal(apiErr)
	}
	return rest.CopyConfig(apiRC)
}

// installAPIs applies the MeshVM CRD and Istio's, and the mesh config the
// core reads.
func installAPIs(ctx context.Context, rc *rest.Config) error {
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	objs, err := istioinstall.RenderIn(filepath.Join(apiDir, "istio-render"), istioinstall.Options{MeshID: "mesh1", ClusterName: "replicas", Network: "kube-network"})
	if err != nil {
		return err
	}
	if _, err := istioinstall.Apply(ctx, rc, objs, istioinstall.LabRunnable); err != nil {
		return err
	}
	var c apiextv1.CustomResourceDefinition
	if err := yaml.Unmarshal(crd.MeshVMs, &c); err != nil {
		return err
	}
	scheme := k8sruntime.NewScheme()
	apiextv1.AddToScheme(scheme)
	cl, err := client.New(rc, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	if err := cl.Create(ctx, &c); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		var got apiextv1.CustomResourceDefinition
		if err := cl.Get(ctx, client.ObjectKeyFromObject(&c), &got); err != nil {
			return err
		}
		if established(&got) {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("CRD %s not established after 30s", c.Name)
		}
	}
	if err := fleetstore.EnsureNamespace(ctx, kube, "istio-system"); err != nil {
		return err
	}
	_, err = kube.CoreV1().ConfigMaps("istio-system").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio", Namespace: "istio-system"},
		Data: map[string]string{"mesh": "defaultConfig: {}\n"}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		err = nil
	}
	return err
}

func established(c *apiextv1.CustomResourceDefinition) bool {
	for _, cond := range c.Status.Conditions {
		if cond.Type == apiextv1.Established && cond.Status == apiextv1.ConditionTrue {
			return true
		}
	}
	return false
}

// replica is one controller replica: a manager with leader election on the
// real API server, stopped by cancelling its context (a kill: it does not
// hand the Lease over).
type replica struct {
	name   string
	mgr    ctrl.Manager
	r      *Reconciler
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// Short leases, so a test's failover takes seconds.
var (
	testLease = 2 * time.Second
	testRenew = 1500 * time.Millisecond
	testRetry = 200 * time.Millisecond
)

func startReplica(t *testing.T, rc *rest.Config, name, storeNS, vmNS, sidecarDir string) *replica {
	t.Helper()
	scheme := k8sruntime.NewScheme()
	for _, add := range []func(*k8sruntime.Scheme) error{clientgoscheme.AddToScheme, v1alpha1.AddToScheme, networkingv1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	skip := true
	mgr, err := ctrl.NewManager(rc, ctrl.Options{
		Scheme: scheme, Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
		LeaderElection: true, LeaderElectionID: v1alpha1.ControllerLease, LeaderElectionNamespace: storeNS,
		LeaseDuration: &testLease, RenewDeadline: &testRenew, RetryPeriod: &testRetry,
		// Only this run's MeshVMs: the runs before it (go test -count) left
		// theirs, whose agents are gone.
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{&v1alpha1.MeshVM{}: {}, &networkingv1.WorkloadEntry{}: {}},
			DefaultNamespaces: map[string]cache.Config{vmNS: {}}},
		// Both replicas' controllers live in one process here.
		Controller: config.Controller{SkipNameValidation: &skip},
	})
	if err != nil {
		t.Fatal(err)
	}
	kc := kubernetes.NewForConfigOrDie(rc)
	ic := istioclient.NewForConfigOrDie(rc)
	r := &Reconciler{Client: mgr.GetClient(), Kube: workload.Clients{Kube: kc, Istio: ic}, Namespace: storeNS,
		Events: mgr.GetEventRecorder("meshvm-controller"), Sidecars: &Sidecars{Dir: sidecarDir},
		// The periodic look is far off: what the test sees comes from the
		// agents' streams and the WorkloadEntries, as in a fleet.
		Resync: 10 * time.Minute, ReleaseAfter: time.Minute,
		Streams: NewStreams(agentwatch.Options{})}
	if err := r.SetupWithManager(mgr, 2); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rp := &replica{name: name, mgr: mgr, r: r, cancel: cancel, done: make(chan error, 1)}
	go func() { rp.done <- mgr.Start(ctx) }()
	t.Cleanup(rp.kill)
	return rp
}

// kill stops the replica and waits for its manager to return.
func (r *replica) kill() {
	r.once.Do(func() {
		r.cancel()
		select {
		case <-r.done:
		case <-time.After(30 * time.Second):
		}
	})
}

func (r *replica) elected(t *testing.T, within time.Duration) {
	t.Helper()
	select {
	case <-r.mgr.Elected():
	case <-time.After(within):
		t.Fatalf("replica %s not elected within %s", r.name, within)
	}
}

// The fleet of one: a simulated VM (the real agent over mTLS, its
// identity from the store) registered by istiod's autoregistration stand-in
// when its sidecar runs.
type oneVM struct {
	sim  *agentsim.Fleet
	vm   *agentsim.VM
	name string
}

func startVM(t *testing.T, kube kubernetes.Interface, ic istioclient.Interface, storeNS string, spec workload.Spec) *oneVM {
	t.Helper()
	ctx := context.Background()
	var sim *agentsim.Fleet
	var err error
	istiod := autoregsim.New(ic, autoregsim.Options{Instance: "istiod-" + spec.Namespace, Grace: time.Second})
	t.Cleanup(istiod.Close)
	var pilot *autoregsim.Pilot
	var mu sync.Mutex
	for range 5 {
		first := netip.AddrFrom4([4]byte{127, byte(1 + rand.IntN(250)), byte(rand.IntN(250)), byte(1 + rand.IntN(250))})
		if l, lerr := net.Listen("tcp", net.JoinHostPort(first.String(), "7443")); lerr != nil {
			continue
		} else {
			l.Close()
		}
		sim, err = agentsim.Start(agentsim.Options{N: 1, Dir: t.TempDir(), First: first, AppPort: spec.Port,
			Name: func(int) string { return "vm-" + spec.Namespace },
			Identity: func(name, addr string) ([]byte, []byte, []byte, error) {
				id, err := fleetstore.New(ctx, kube, storeNS, spec.Namespace).AgentIdentity(name, []string{addr})
				return id.Cert, id.Key, id.ClientCA, err
			},
			OnSidecar: func(vm *agentsim.VM, u agentsim.Unit) {
				mu.Lock()
				defer mu.Unlock()
				if pilot == nil {
					pilot = istiod.Pilot(vm.ReadFile, vm.Address, func(err error) { t.Logf("pilot-agent stand-in: %v", err) })
				}
				pilot.Sidecar(u.MainPID)
			},
		})
		if err == nil {
			break
		}
	}
	if sim == nil {
		t.Skipf("no free loopback address for a simulated VM: %v", err)
	}
	t.Cleanup(func() {
		mu.Lock()
		p := pilot
		mu.Unlock()
		if p != nil {
			p.Close()
		}
		sim.Close()
	})
	return &oneVM{sim: sim, vm: sim.VMs[0], name: sim.VMs[0].Name}
}

// fleetFor makes a run's store namespace (the Lease, the Secrets, the
// settings) and workload namespace, and the sidecar's stand-in files.
func fleetFor(t *testing.T, rc *rest.Config) (storeNS string, spec workload.Spec, sidecarDir string, c workload.Clients) {
	t.Helper()
	ctx := context.Background()
	n := runs.Add(1)
	storeNS = fmt.Sprintf("fo%d-system", n)
	spec = workload.Spec{Namespace: fmt.Sprintf("fo%d", n), ServiceAccount: "vmsa", Group: "app", Port: 8000, PortName: "http",
		Network: "vm-network", ProbePath: "/", ProbePort: 8000, ProbePeriod: 1, ProbeInitialDelay: 1}
	c = workload.Clients{Kube: kubernetes.NewForConfigOrDie(rc), Istio: istioclient.NewForConfigOrDie(rc)}
	if err := fleetstore.EnsureNamespace(ctx, c.Kube, storeNS); err != nil {
		t.Fatal(err)
	}
	if _, err := workload.Ensure(ctx, c, spec); err != nil {
		t.Fatal(err)
	}
	if _, err := fleetstore.PutSettings(ctx, c.Kube, storeNS, fleetstore.Settings{ClusterID: "replicas", IstiodAddress: "127.0.0.1",
		IstiodVersions: map[string]string{"default": istioinstall.EmbeddedVersion}}); err != nil {
		t.Fatal(err)
	}
	ca, err := fleetstore.New(ctx, c.Kube, storeNS, spec.Namespace).CA()
	if err != nil {
		t.Fatal(err)
	}
	if err := autoregsim.PublishRootCert(ctx, c.Kube, spec.Namespace, ca.CertPEM()); err != nil {
		t.Fatal(err)
	}
	sidecarDir = t.TempDir()
	side := filepath.Join(sidecarDir, istioinstall.EmbeddedVersion, runtime.GOARCH)
	if err := os.MkdirAll(side, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"pilot-agent", "envoy", "envoy_bootstrap_tmpl.json"} {
		if err := os.WriteFile(filepath.Join(side, name), []byte("stand-in "+name+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return storeNS, spec, sidecarDir, c
}

// waitVM polls the MeshVM until ok holds, failing after within.
func waitVM(t *testing.T, cl client.Client, key types.NamespacedName, within time.Duration, what string, ok func(*v1alpha1.MeshVM) bool) (v1alpha1.MeshVM, time.Duration) {
	t.Helper()
	start := time.Now()
	var vm v1alpha1.MeshVM
	for {
		err := cl.Get(context.Background(), key, &vm)
		if err == nil && ok(&vm) {
			return vm, time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("%s: not within %s (last error %v); status %+v", what, within, err, vm.Status)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func conditionIs(vm *v1alpha1.MeshVM, typ string, s metav1.ConditionStatus) bool {
	c := findCondition(vm.Status.Conditions, typ)
	return c != nil && c.Status == s
}

func leaseHolder(t *testing.T, kube kubernetes.Interface, ns string) string {
	t.Helper()
	h, err := holderOf(kube, ns)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// holderOf is who holds the controller's Lease in ns ("" when no one).
func holderOf(kube kubernetes.Interface, ns string) (string, error) {
	l, err := kube.CoordinationV1().Leases(ns).Get(context.Background(), v1alpha1.ControllerLease, metav1.GetOptions{})
	if err != nil || l.Spec.HolderIdentity == nil {
		return "", err
	}
	return *l.Spec.HolderIdentity, nil
}

// A VM onboarded by one replica keeps its identity when the leader is
// killed: the other replica takes the Lease, opens its own stream to the
// same agent (its stream connected) and sees the same MeshVM (UID, address, conditions, token and
// its records) without onboarding it again; a sidecar stopped on the VM is
// then acted on by the new leader, and the agent's loss is reported within
// its bound (two keepalive periods, the bound of a silent loss; a clean one
// is seen at once). Istio's TestVMRegistrationLifecycle cases, kept
// deterministic: every wait is on an observed state, and the periodic look
// is 10 minutes off, so what happens comes from the streams and the
// WorkloadEntries.
func TestLeaderKilledTheOtherReplicaKeepsTheVM(t *testing.T) {
	rc := replicaAPI(t)
	ctx := context.Background()
	storeNS, spec, sidecars, c := fleetFor(t, rc)
	vm := startVM(t, c.Kube, c.Istio, storeNS, spec)

	t0 := time.Now()
	a := startReplica(t, rc, "a", storeNS, spec.Namespace, sidecars)
	a.elected(t, 30*time.Second)
	b := startReplica(t, rc, "b", storeNS, spec.Namespace, sidecars)
	holderA := leaseHolder(t, c.Kube, storeNS)

	scheme := k8sruntime.NewScheme()
	v1alpha1.AddToScheme(scheme)
	cl, err := client.New(rc, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	app := true
	m := &v1alpha1.MeshVM{ObjectMeta: metav1.ObjectMeta{Name: vm.name, Namespace: spec.Namespace},
		Spec: v1alpha1.MeshVMSpec{Address: vm.vm.Address, WorkloadGroup: spec.Group, Network: spec.Network, App: &app}}
	if err := cl.Create(ctx, m); err != nil {
		t.Fatal(err)
	}
	key := client.ObjectKeyFromObject(m)
	t.Cleanup(func() {
		// After the replicas (cleanups run last first): nobody finalizes it.
		cl.Patch(ctx, m, client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`)))
		cl.Delete(ctx, m)
	})
	before, _ := waitVM(t, cl, key, 60*time.Second, "Ready under replica a, its stream open", func(m *v1alpha1.MeshVM) bool {
		return conditionIs(m, v1alpha1.ConditionReady, metav1.ConditionTrue) && m.Status.TokenExpiresAt != nil && strings.HasPrefix(m.Status.Agent, "connected ")
	})
	select {
	case <-b.mgr.Elected():
		t.Fatal("both replicas lead")
	default:
	}
	if open, _ := b.r.Streams.Open(); open != 0 {
		t.Fatalf("replica b holds %d streams before it leads", open)
	}
	store := fleetstore.New(ctx, c.Kube, storeNS, spec.Namespace)
	tokBefore, err := store.Token(vm.name)
	if err != nil || len(tokBefore) == 0 {
		t.Fatalf("no token recorded: %v", err)
	}
	joinedBefore, _, err := store.Joined(vm.name)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Ready under replica a after %s", time.Since(t0).Round(time.Millisecond))

	a.kill()
	b.elected(t, 4*testLease+10*time.Second)
	if h := leaseHolder(t, c.Kube, storeNS); h == holderA || h == "" {
		t.Fatalf("the Lease is held by %q after the leader was killed (it was %q)", h, holderA)
	}
	t.Logf("replica b elected after %s", time.Since(t0).Round(time.Millisecond))

	// The new leader's pass (its first look at every MeshVM) opens its own
	// stream: the AGENT column's "since" moves, nothing else does.
	after, _ := waitVM(t, cl, key, 30*time.Second, "the stream moved to replica b", func(m *v1alpha1.MeshVM) bool {
		open, _ := b.r.Streams.Open()
		return open == 1 && b.r.Streams.link(key).Connected && strings.HasPrefix(m.Status.Agent, "connected ")
	})
	if after.UID != before.UID || after.Status.Address != before.Status.Address || !after.Status.TokenExpiresAt.Equal(before.Status.TokenExpiresAt) ||
		after.Status.ObservedGeneration != before.Status.ObservedGeneration {
		t.Errorf("the MeshVM changed identity across the failover:\nbefore %s %+v\nafter  %s %+v", before.UID, before.Status, after.UID, after.Status)
	}
	for _, typ := range []string{v1alpha1.ConditionReady, v1alpha1.ConditionAgentReachable, v1alpha1.ConditionCredentialsValid, v1alpha1.ConditionSidecarRunning, v1alpha1.ConditionHealthy} {
		was, now := findCondition(before.Status.Conditions, typ), findCondition(after.Status.Conditions, typ)
		if was == nil || now == nil || was.Status != now.Status || !was.LastTransitionTime.Equal(&now.LastTransitionTime) {
			t.Errorf("%s: before %+v, after %+v: want it untouched", typ, was, now)
		}
	}
	// The records, read afresh: the same token, address and join.
	store = fleetstore.New(ctx, c.Kube, storeNS, spec.Namespace)
	if tok, _ := store.Token(vm.name); string(tok) != string(tokBefore) {
		t.Error("the new leader issued a new token for a VM that needed none")
	}
	if addr, _ := store.Address(vm.name); addr != vm.vm.Address {
		t.Errorf("the recorded address is %q, want %s", addr, vm.vm.Address)
	}
	if j, _, _ := store.Joined(vm.name); !reflect.DeepEqual(j, joinedBefore) {
		t.Errorf("the recorded join changed: %+v, was %+v", j, joinedBefore)
	}
	t.Logf("identity checked after %s", time.Since(t0).Round(time.Millisecond))

	// The new leader acts on what its stream tells: a sidecar stopped on
	// the VM is started again.
	stopped, err := vm.vm.StopSidecar()
	if err != nil {
		t.Fatal(err)
	}
	waitVM(t, cl, key, 30*time.Second, "the sidecar started again by replica b", func(*v1alpha1.MeshVM) bool {
		u := vm.vm.Sidecar()
		return u.Active() && u.MainPID != stopped.MainPID
	})
	t.Logf("sidecar restarted after %s", time.Since(t0).Round(time.Millisecond))

	// The agent gone: reported within two keepalive periods.
	bound := 2 * (agentspec.KeepaliveTime + agentspec.KeepaliveTimeout)
	vm.sim.Close()
	_, took := waitVM(t, cl, key, bound, "the agent's loss", func(m *v1alpha1.MeshVM) bool {
		return strings.HasPrefix(m.Status.Agent, "disconnected") || conditionIs(m, v1alpha1.ConditionAgentReachable, metav1.ConditionFalse)
	})
	got, _ := waitVM(t, cl, key, bound, "the agent's loss", func(*v1alpha1.MeshVM) bool { return true })
	t.Logf("the agent's loss reported after %s (bound %s): AGENT %q", took.Round(time.Millisecond), bound, got.Status.Agent)
}
