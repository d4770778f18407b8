//go:build linux

package vmctl

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/yaml"

	"github.com/meshvm/meshvm/api/meshvm/crd"
	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/lab/cluster"
	"github.com/meshvm/meshvm/lab/cluster/clustertest"
	"github.com/meshvm/meshvm/pkg/agentspec"
	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/host/agentwatch"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/mesh/autoregsim"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
	"github.com/meshvm/meshvm/vmagent/agentsim"
	"github.com/meshvm/meshvm/vmagent/agenttest"
)

var labGroup = workload.Spec{Namespace: "vmns", ServiceAccount: "vmsa", Group: "external-app", Port: 8000, PortName: "http", Network: "vm-network",
	ProbePath: "/", ProbePort: 8000, ProbePeriod: 5}

// labController is the real controller (manager, leader election, cache,
// work queue, agent streams, metrics endpoint) on the lab's real API
// server with Istio's resources and no istiod.
type labController struct {
	t       *testing.T
	rc      *rest.Config
	c       client.Client
	kube    kubernetes.Interface
	istio   istioclient.Interface
	store   *fleetstore.Store
	metrics string
	// stop stops the manager and waits for it (before the agents go).
	stop func()
}

// labOptions shape the controller under test (zero: the defaults).
type labOptions struct {
	workers    int
	qps        float32
	burst      int
	queue      QueueLimits
	wrap       func(http.RoundTripper) http.RoundTripper
	agentDials float64
}

func startLabController(t *testing.T, o labOptions) *labController {
	t.Helper()
	if o.workers == 0 {
		o.workers = 4
	}
	if o.qps == 0 {
		o.qps, o.burst = 50, 100
	}
	// Its own ports: no VMs nor istiod, so it runs beside the lab tests.
	rc := clustertest.StartIstioAPI(t, cluster.Ports{API: 30543, Etcd: 30544, EtcdPeer: 30545, Controller: 22257})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	// The harness's own client (setup: a thousand VMs' identities, Secrets
	// each) is not what is measured: client-go's default 5/s would make a
	// 1,000-VM setup take minutes.
	hrc := rest.CopyConfig(rc)
	hrc.QPS, hrc.Burst = 500, 1000
	lc := &labController{t: t, rc: rc, kube: kubernetes.NewForConfigOrDie(hrc), istio: istioclient.NewForConfigOrDie(rc)}
	installCRD(ctx, t, dynamic.NewForConfigOrDie(rc))
	wc := workload.Clients{Kube: lc.kube, Istio: lc.istio}
	if _, err := workload.Ensure(ctx, wc, labGroup); err != nil {
		t.Fatal(err)
	}
	if _, err := lc.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fleetstore.DefaultNamespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if _, err := fleetstore.PutSettings(ctx, lc.kube, fleetstore.DefaultNamespace, fleetstore.Settings{ClusterID: "test", IstiodAddress: "10.0.0.1",
		IstiodVersions: map[string]string{"default": "1.31.0"}}); err != nil {
		t.Fatal(err)
	}
	lc.store = fleetstore.New(context.Background(), lc.kube, fleetstore.DefaultNamespace, labGroup.Namespace)
	ca, err := lc.store.CA()
	if err != nil {
		t.Fatal(err)
	}
	if err := autoregsim.PublishRootCert(ctx, lc.kube, labGroup.Namespace, ca.CertPEM()); err != nil {
		t.Fatal(err)
	}

	// The sidecar's files, stood in (the agent only stores them).
	side := filepath.Join(t.TempDir(), "sidecar")
	if err := os.MkdirAll(filepath.Join(side, "1.31.0", runtime.GOARCH), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"pilot-agent", "envoy", "envoy_bootstrap_tmpl.json"} {
		if err := os.WriteFile(filepath.Join(side, "1.31.0", runtime.GOARCH, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}

	scheme := k8sruntime.NewScheme()
	for _, add := range []func(*k8sruntime.Scheme) error{clientgoscheme.AddToScheme, v1alpha1.AddToScheme, networkingv1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	lc.metrics = freePort(t)
	// The controller's own client config: its limits, its requests counted.
	crc := rest.CopyConfig(rc)
	crc.QPS, crc.Burst = o.qps, o.burst
	crc.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(o.qps, o.burst) // as main does
	if o.wrap != nil {
		crc.Wrap(o.wrap)
	}
	skipNames := true // one "meshvm" controller per test, and tests run with -count
	mgr, err := ctrl.NewManager(crc, ctrl.Options{Scheme: scheme, Controller: config.Controller{SkipNameValidation: &skipNames}, Metrics: metricsserver.Options{BindAddress: lc.metrics}, HealthProbeBindAddress: "0",
		LeaderElection: true, LeaderElectionID: v1alpha1.ControllerLease, LeaderElectionNamespace: fleetstore.DefaultNamespace,
		Cache: labScope.CacheOptions()})
	if err != nil {
		t.Fatal(err)
	}
	cwc := workload.Clients{Kube: kubernetes.NewForConfigOrDie(crc), Istio: istioclient.NewForConfigOrDie(crc)}
	r := &Reconciler{Client: mgr.GetClient(), Kube: cwc, Namespace: fleetstore.DefaultNamespace, Events: mgr.GetEventRecorder("meshvm-controller"),
		Sidecars: &Sidecars{Dir: side}, Forms: nil,
		// So long that only an event explains a pass after the VM is Ready.
		Resync: time.Hour, ReleaseAfter: time.Minute,
		Streams: NewStreams(agentwatch.Options{PollInterval: time.Second, DialsPerSecond: o.agentDials}), Queue: o.queue, Scope: labScope}
	if err := r.SetupWithManager(mgr, o.workers); err != nil {
		t.Fatal(err)
	}
	mctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(mctx) }()
	var once sync.Once
	lc.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("manager: %v", err)
			}
		})
	}
	t.Cleanup(lc.stop)
	lc.c = mgr.GetClient()
	return lc
}

// labScope is what the lab's controller caches, as main's defaults.
var labScope = Scope{Namespace: fleetstore.DefaultNamespace, IstioNamespace: "istio-system"}

func installCRD(ctx context.Context, t *testing.T, dc dynamic.Interface) {
	var u unstructured.Unstructured
	if err := yaml.Unmarshal(crd.MeshVMs, &u.Object); err != nil {
		t.Fatal(err)
	}
	gvr := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	if _, err := dc.Resource(gvr).Create(ctx, &u, metav1.CreateOptions{}); err != nil {
		t.Fatalf("the MeshVM CRD: %v", err)
	}
	vms := dc.Resource(schema.GroupVersionResource{Group: "meshvm.io", Version: "v1alpha1", Resource: "meshvms"})
	deadline := time.Now().Add(time.Minute)
	for {
		if _, err := vms.List(ctx, metav1.ListOptions{}); err == nil {
			return
		} else if time.Now().After(deadline) {
			t.Fatalf("meshvms never served: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func freePort(t *testing.T) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	return lis.Addr().String()
}

func (lc *labController) create(name, addr string) {
	lc.t.Helper()
	vm := &v1alpha1.MeshVM{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: labGroup.Namespace},
		Spec: v1alpha1.MeshVMSpec{Address: addr, WorkloadGroup: labGroup.Group}}
	if err := lc.c.Create(context.Background(), vm); err != nil {
		lc.t.Fatal(err)
	}
}

// wait polls VM name's MeshVM (from the API server) until ok.
func (lc *labController) wait(name, what string, within time.Duration, ok func(*v1alpha1.MeshVM) bool) *v1alpha1.MeshVM {
	lc.t.Helper()
	deadline := time.Now().Add(within)
	for {
		var vm v1alpha1.MeshVM
		err := lc.c.Get(context.Background(), types.NamespacedName{Namespace: labGroup.Namespace, Name: name}, &vm)
		if err == nil && ok(&vm) {
			return &vm
		}
		if time.Now().After(deadline) {
			lc.t.Fatalf("%s: not %s within %s: %v %s", name, what, within, err, conditions(&vm))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func conditions(vm *v1alpha1.MeshVM) string {
	var b strings.Builder
	fmt.Fprintf(&b, "agent %q sidecar %q;", vm.Status.Agent, vm.Status.Sidecar)
	for _, c := range vm.Status.Conditions {
		fmt.Fprintf(&b, " %s=%s(%s: %.120s)", c.Type, c.Status, c.Reason, c.Message)
	}
	return b.String()
}

func condIs(t string, s metav1.ConditionStatus) func(*v1alpha1.MeshVM) bool {
	return func(vm *v1alpha1.MeshVM) bool {
		c := findCondition(vm.Status.Conditions, t)
		return c != nil && c.Status == s
	}
}

// scrape reads the metrics endpoint: each sample line's value by its
// name and labels as printed.
func (lc *labController) scrape() map[string]float64 {
	lc.t.Helper()
	resp, err := http.Get("http://" + lc.metrics + "/metrics")
	if err != nil {
		lc.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// sum adds the samples whose name and labels match re.
func sum(samples map[string]float64, re string) (float64, bool) {
	rx := regexp.MustCompile(re)
	total, seen := 0.0, false
	for k, v := range samples {
		if rx.MatchString(k) {
			total, seen = total+v, true
		}
	}
	return total, seen
}

// The controller with its agent streams on the lab's real API server and
// real agents over real mTLS, resync set to an hour so that only an
// agent's stream can explain what follows a VM's Ready:
//   - a sidecar stopped on a VM is started again by the controller, and one
//     it cannot start shows as SidecarRunning False;
//   - an agent whose packets stop shows as AgentReachable False within two
//     keepalive periods;
//   - an agent without watch.v1 is polled (its AGENT column says so);
//   - the metrics endpoint serves controller-runtime's and meshvm's own.
func TestControllerFollowsAgentStreams(t *testing.T) {
	lc := startLabController(t, labOptions{})
	ctx := context.Background()

	// "a": a simulated VM (the real agent, systemd stood in) whose unit is
	// installed, as hostctl's agent install leaves it.
	ipA := freeLoopback(t)
	fleet, err := agentsim.Start(agentsim.Options{N: 1, Dir: t.TempDir(), First: netip.MustParseAddr(ipA), Name: func(int) string { return "a" },
		Identity: func(name, addr string) ([]byte, []byte, []byte, error) {
			id, err := lc.store.AgentIdentity(name, []string{addr})
			return id.Cert, id.Key, id.ClientCA, err
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer fleet.Close()
	vmA := fleet.VMs[0]
	unit := filepath.Join(vmA.Root, "etc/systemd/system/istio.service")
	if err := os.MkdirAll(filepath.Dir(unit), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(unit, []byte("[Service]\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	// "old": an agent of an older release (no watch.v1); "gone": an agent
	// behind a link that can fall silent.
	agentAt := func(name, ip, listen string, lacking ...string) *agenttest.Agent {
		id, err := lc.store.AgentIdentity(name, []string{ip})
		if err != nil {
			t.Fatal(err)
		}
		ca, err := lc.store.CA()
		if err != nil {
			t.Fatal(err)
		}
		return agenttest.Start(t, agenttest.Options{Listen: listen, CA: ca, ServerCert: id.Cert, ServerKey: id.Key, Lacking: lacking})
	}
	ipOld, ipGone := freeLoopback(t), freeLoopback(t)
	agentAt("old", ipOld, net.JoinHostPort(ipOld, strconv.Itoa(agentspec.Port)), agentspec.WatchCapability)
	gone := agentAt("gone", ipGone, net.JoinHostPort(ipGone, "0"))
	hole := newBlackhole(t, net.JoinHostPort(ipGone, strconv.Itoa(agentspec.Port)), gone.Addr)

	lc.create("a", ipA)
	lc.create("old", ipOld)
	lc.create("gone", ipGone)

	// a: files delivered and the sidecar started; then istiod's
	// registration (stood in) makes it Healthy, and it is Ready.
	lc.wait("a", "sidecar running", 2*time.Minute, condIs(string(vmcore.SidecarRunning), metav1.ConditionTrue))
	istiod := autoregsim.New(lc.istio, autoregsim.Options{Instance: "istiod-0"})
	defer istiod.Close()
	proxy := autoregsim.Proxy{Namespace: labGroup.Namespace, Group: labGroup.Group, IP: ipA, Network: labGroup.Network, HealthChecks: true}
	if _, err := istiod.Connect(ctx, proxy, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := istiod.Health(ctx, proxy, true, "", time.Now()); err != nil {
		t.Fatal(err)
	}
	ready := lc.wait("a", "Ready", time.Minute, func(vm *v1alpha1.MeshVM) bool {
		return condIs(v1alpha1.ConditionReady, metav1.ConditionTrue)(vm) && strings.HasPrefix(vm.Status.Agent, "connected ")
	})
	t.Logf("a Ready, agent %q", ready.Status.Agent)

	// The sidecar stopped: the stream brings the pass that starts it again.
	pid := vmA.Sidecar().MainPID
	if _, err := vmA.StopSidecar(); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	deadline := stopped.Add(time.Minute)
	for u := vmA.Sidecar(); !u.Active() || u.MainPID == pid; u = vmA.Sidecar() {
		if time.Now().After(deadline) {
			t.Fatalf("a's sidecar not started again: %+v", u)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("a's stopped sidecar started again by the controller after %s", time.Since(stopped).Round(10*time.Millisecond))

	// A sidecar the pass cannot start (its binary cannot run): stopped, it
	// stays down, SidecarRunning False.
	vmA.BreakSidecar()
	if _, err := vmA.StopSidecar(); err != nil {
		t.Fatal(err)
	}
	stopped = time.Now()
	failed := lc.wait("a", "SidecarRunning False", time.Minute, condIs(string(vmcore.SidecarRunning), metav1.ConditionFalse))
	t.Logf("a SidecarRunning False after %s: %s", time.Since(stopped).Round(10*time.Millisecond), findCondition(failed.Status.Conditions, string(vmcore.SidecarRunning)).Message)

	// old: polled, said in the AGENT column.
	lc.wait("old", "polled", time.Minute, func(vm *v1alpha1.MeshVM) bool { return strings.HasPrefix(vm.Status.Agent, "polled ") })

	// gone: reachable, then its packets stop.
	lc.wait("gone", "connected", time.Minute, func(vm *v1alpha1.MeshVM) bool {
		return condIs(string(vmcore.AgentReachable), metav1.ConditionTrue)(vm) && strings.HasPrefix(vm.Status.Agent, "connected ")
	})
	hole.silence()
	silenced := time.Now()
	bound := 2 * agentspec.KeepaliveTime
	lost := lc.wait("gone", "AgentReachable False", bound+10*time.Second, func(vm *v1alpha1.MeshVM) bool {
		return condIs(string(vmcore.AgentReachable), metav1.ConditionFalse)(vm) && strings.HasPrefix(vm.Status.Agent, "disconnected since ")
	})
	t.Logf("gone: AgentReachable False %s after its packets stopped (two keepalive periods: %s); agent %q", time.Since(silenced).Round(100*time.Millisecond), bound, lost.Status.Agent)

	// The metrics: controller-runtime's own and meshvm's.
	m := lc.scrape()
	for _, want := range []struct{ re, what string }{
		{`^controller_runtime_reconcile_total\{controller="meshvm",.*result="requeue_after"`, "passes"},
		{`^controller_runtime_reconcile_total\{controller="meshvm",.*result="error"`, "failed passes"},
		{`^controller_runtime_reconcile_time_seconds_count\{controller="meshvm"`, "pass durations"},
		{`^rest_client_requests_total\{.*method="GET"`, "API GETs"},
		{`^rest_client_requests_total\{.*method="PUT"`, "API PUTs (status)"},
		{`^meshvm_reconcile_errors_total\{reason="StartFailed"\}`, "errors by reason: a sidecar that does not start"},
		{`^meshvm_reconcile_errors_total\{reason="Unreachable"\}`, "errors by reason: an agent lost"},
		{`^workqueue_adds_total\{controller="meshvm"`, "queue adds"},
	} {
		if v, ok := sum(m, want.re); !ok || v < 1 {
			t.Errorf("%s: %s = %v (seen %v)", want.what, want.re, v, ok)
		}
	}
	for re, want := range map[string]float64{
		`^meshvm_vms\{status="True",type="Registered"\}`: 1,
		// a's, and old's and gone's (no systemd in their sandboxes)
		`^meshvm_vms\{status="False",type="SidecarRunning"\}`: 3,
		`^meshvm_agent_streams\{kind="polled"\}`:              1,
		`^meshvm_agent_streams\{kind="stream"\}`:              1, // a; gone's is lost
	} {
		if v, _ := sum(m, re); v != want {
			t.Errorf("%s = %v, want %v", re, v, want)
		}
	}
	passes, _ := sum(m, `^controller_runtime_reconcile_total\{controller="meshvm"`)
	gets, _ := sum(m, `^rest_client_requests_total\{`)
	t.Logf("%v passes, %v API requests in all (setup included)", passes, gets)
	lc.stop()
}
