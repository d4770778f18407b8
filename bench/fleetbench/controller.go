package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/bench/internal/measure"
	"github.com/meshvm/meshvm/lab/procs"
	"github.com/meshvm/meshvm/lab/stack"
	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/host/fleetmode"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
	"github.com/meshvm/meshvm/vmagent/agentsim"
)

// The controller rows: the real controller binary, two replicas with
// leader election (processes, so the leader can be killed), against the
// lab's API server, the simulated agents and the autoregistration stand-in.
// API requests are counted by the controller's own client-go metrics
// (rest_client_requests_total by method and code, every request of its
// process: MeshVMs, Secrets, TokenRequests, Events, WorkloadEntries),
// scraped from its metrics endpoint.

// ctlNS is the controller's namespace (its Secrets, settings, Lease).
const ctlNS = fleetstore.DefaultNamespace

// renewAnnotation asks the controller for a fresh token now (hostctl vm
// renew --force in fleet mode). A controller without it leaves the
// rotation row at 0.
const renewAnnotation = "meshvm.io/renew"

type ctlConfig struct {
	sizes               []int
	atRest              time.Duration
	budget              time.Duration
	trials              int
	workers             int
	qps                 float64
	burst               int
	queueQPS            float64
	queueBurst          int
	lease, renew, retry time.Duration
	// profileDir, when set, gets the leader's heap profile after the rest.
	profileDir string
	// restOnly stops each size after the rest (onboarding, memory, at rest).
	restOnly bool
}

// ctlLab is what the controller rows share.
type ctlLab struct {
	bin, sidecarDir, kubeconfig string
	// clusterDir is the lab cluster's: its processes' PIDs.
	clusterDir string
	dyn        dynamic.Interface
	cl         client.Client
	rc         *rest.Config
}

func (l *lab) controllerSetup(ctx context.Context, cfg stack.Config, st *stack.Stack) (*ctlLab, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", st.Kubeconfig)
	if err != nil {
		return nil, err
	}
	rc.QPS, rc.Burst = 200, 400
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	if _, err := fleetmode.ApplyCRD(ctx, dyn); err != nil {
		return nil, err
	}
	if err := fleetstore.EnsureNamespace(ctx, l.admin.Kube, ctlNS); err != nil {
		return nil, err
	}
	if _, err := fleetstore.PutCA(ctx, l.admin.Kube, ctlNS, l.ca); err != nil {
		return nil, err
	}
	if _, err := fleetstore.PutSettings(ctx, l.admin.Kube, ctlNS, fleetstore.Settings{ClusterID: clusterID, IstiodAddress: "127.0.0.1",
		IstiodVersions: map[string]string{"default": istioinstall.EmbeddedVersion}}); err != nil {
		return nil, err
	}
	if err := fleetstore.EnsureNamespace(ctx, l.admin.Kube, "istio-system"); err != nil {
		return nil, err
	}
	_, err = l.admin.Kube.CoreV1().ConfigMaps("istio-system").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio", Namespace: "istio-system"},
		Data: map[string]string{"mesh": "defaultConfig: {}\n"}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	c := &ctlLab{kubeconfig: st.Kubeconfig, dyn: dyn, rc: rc, sidecarDir: filepath.Join(l.dir, "ctl-sidecar"), clusterDir: filepath.Join(cfg.Dir, "cluster")}
	if _, err := standInSidecar(filepath.Join(c.sidecarDir, istioinstall.EmbeddedVersion, runtime.GOARCH), 4<<10); err != nil {
		return nil, err
	}
	scheme := k8sruntime.NewScheme()
	v1alpha1.AddToScheme(scheme)
	if c.cl, err = client.New(rc, client.Options{Scheme: scheme}); err != nil {
		return nil, err
	}
	fmt.Fprintln(os.Stderr, "fleetbench: building the controller")
	if c.bin, err = stack.BuildController(ctx, cfg); err != nil {
		return nil, err
	}
	return c, nil
}

// replica is one controller process.
type replica struct {
	name, metrics, pprof string
	cmd                  *exec.Cmd
	exited               chan struct{}
}

func (c *ctlLab) startReplica(dir, name string, port int, cc ctlConfig) (*replica, error) {
	d := filepath.Join(dir, name)
	if err := os.MkdirAll(d, 0o700); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(d, "log"))
	if err != nil {
		return nil, err
	}
	// Three ports from port: metrics, probes, pprof.
	r := &replica{name: name, metrics: fmt.Sprintf("127.0.0.1:%d", port), pprof: fmt.Sprintf("127.0.0.1:%d", port+2), exited: make(chan struct{})}
	r.cmd = exec.Command(c.bin, "--kubeconfig", c.kubeconfig, "--namespace", ctlNS,
		"--metrics-bind-address", r.metrics, "--health-probe-bind-address", fmt.Sprintf("127.0.0.1:%d", port+1), "--pprof-bind-address", r.pprof,
		"--sidecar-dir", c.sidecarDir, "--cache-dir", filepath.Join(d, "cache"),
		"--workers", strconv.Itoa(cc.workers), "--kube-api-qps", fmt.Sprint(cc.qps), "--kube-api-burst", strconv.Itoa(cc.burst),
		"--leader-elect-lease-duration", cc.lease.String(), "--leader-elect-renew-deadline", cc.renew.String(), "--leader-elect-retry-period", cc.retry.String())
	if cc.queueQPS > 0 {
		r.cmd.Args = append(r.cmd.Args, "--queue-qps", fmt.Sprint(cc.queueQPS), "--queue-burst", strconv.Itoa(cc.queueBurst))
	}
	r.cmd.Stdout, r.cmd.Stderr = logf, logf
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := r.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { r.cmd.Wait(); logf.Close(); close(r.exited) }()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if _, err := r.scrape(); err == nil {
			return r, nil
		}
		select {
		case <-r.exited:
			return nil, fmt.Errorf("controller %s exited at start: see %s", name, filepath.Join(d, "log"))
		default:
		}
		if time.Now().After(deadline) {
			r.kill()
			return nil, fmt.Errorf("controller %s: no metrics after 30s: see %s", name, filepath.Join(d, "log"))
		}
	}
}

// kill ends the process at once: no Lease handed over.
func (r *replica) kill() {
	r.cmd.Process.Kill()
	<-r.exited
}

var sample = regexp.MustCompile(`^([a-zA-Z_:]+)(\{[^}]*\})? ([0-9.eE+-]+)$`)

// scrape is the replica's metrics: name{labels} → value.
func (r *replica) scrape() (map[string]float64, error) {
	resp, err := http.Get("http://" + r.metrics + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := sample.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			continue
		}
		out[m[1]+m[2]] = v
	}
	return out, sc.Err()
}

// heapProfile writes the replica's heap profile (Go's pprof format) to path.
func (r *replica) heapProfile(path string) error {
	resp, err := http.Get("http://" + r.pprof + "/debug/pprof/heap")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("heap profile of %s: %s", r.name, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// procMemory is a lab cluster process's RSS now and at its peak (0 when
// it is not running).
func (c *ctlLab) procMemory(name string) (rss, peak int64) {
	pid, ok := procs.Dir(c.clusterDir).Running(name)
	if !ok {
		return 0, 0
	}
	rss, _ = measure.RSS(pid)
	peak, _ = measure.PeakRSS(pid)
	return rss, peak
}

// labeled sums the samples of metric name by the value of label.
func labeled(m map[string]float64, name, label string) map[string]int {
	out := map[string]int{}
	re := regexp.MustCompile(label + `="([^"]*)"`)
	for k, v := range m {
		if !strings.HasPrefix(k, name+"{") {
			continue
		}
		if s := re.FindStringSubmatch(k); s != nil {
			out[s[1]] += int(v)
		}
	}
	return out
}

// requests sums rest_client_requests_total by method and by code.
func requests(m map[string]float64) (byMethod, byCode map[string]int) {
	byMethod, byCode = map[string]int{}, map[string]int{}
	re := regexp.MustCompile(`code="([^"]*)".*method="([^"]*)"`)
	for k, v := range m {
		if !strings.HasPrefix(k, "rest_client_requests_total{") {
			continue
		}
		if s := re.FindStringSubmatch(k); s != nil {
			byCode[s[1]] += int(v)
			byMethod[s[2]] += int(v)
		}
	}
	return byMethod, byCode
}

func (r *replica) leading() bool {
	m, err := r.scrape()
	if err != nil {
		return false
	}
	for k, v := range m {
		if strings.HasPrefix(k, "leader_election_master_status") && v == 1 {
			return true
		}
	}
	return false
}

func (r *replica) reconciles() int {
	m, _ := r.scrape()
	n := 0
	for k, v := range m {
		if strings.HasPrefix(k, "controller_runtime_reconcile_total{") && strings.Contains(k, `controller="meshvm"`) {
			n += int(v)
		}
	}
	return n
}

// streams is how many agent streams the replica holds open
// (meshvm_agent_streams, both kinds).
func (r *replica) streams() int {
	m, _ := r.scrape()
	n := 0
	for k, v := range m {
		if strings.HasPrefix(k, "meshvm_agent_streams{") {
			n += int(v)
		}
	}
	return n
}

// counts is a replica's requests at one moment (0 when it is gone).
type counts struct{ method, code map[string]int }

func (r *replica) counts() counts {
	m, _ := r.scrape()
	method, code := requests(m)
	return counts{method, code}
}

func (c counts) since(b counts) counts {
	return counts{measure.Since(c.method, b.method), measure.Since(c.code, b.code)}
}

func (c counts) writes() int {
	return c.method["POST"] + c.method["PUT"] + c.method["PATCH"] + c.method["DELETE"]
}

// serverWrites is the API server's own count of write requests (all
// clients) by verb and resource: apiserver_request_total.
func (l *lab) serverWrites(ctx context.Context) map[string]int {
	b, err := l.admin.Kube.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	out := map[string]int{}
	if err != nil {
		return out
	}
	label := func(k, name string) string {
		i := strings.Index(k, name+`="`)
		if i < 0 {
			return ""
		}
		rest := k[i+len(name)+2:]
		return rest[:strings.IndexByte(rest, '"')]
	}
	for _, line := range strings.Split(string(b), "\n") {
		m := sample.FindStringSubmatch(line)
		if m == nil || m[1] != "apiserver_request_total" {
			continue
		}
		verb := label(m[2], "verb")
		if verb != "POST" && verb != "PUT" && verb != "PATCH" && verb != "DELETE" && verb != "APPLY" {
			continue
		}
		res := label(m[2], "resource")
		if sub := label(m[2], "subresource"); sub != "" {
			res += "/" + sub
		}
		v, _ := strconv.ParseFloat(m[3], 64)
		out[verb+" "+res] += int(v)
	}
	return out
}

// countsSorted is m as "key: n" pairs, the largest first.
func countsSorted(m map[string]int) string {
	keys := slices.SortedFunc(maps.Keys(m), func(a, b string) int { return m[b] - m[a] })
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%q: %d", k, m[k]))
	}
	return strings.Join(parts, "; ")
}

func perVMSorted(m map[string]int, n int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %.2f", k, float64(m[k])/float64(n)))
	}
	return strings.Join(parts, ", ")
}

// vmWatch follows the MeshVMs of a namespace from an informer.
type vmWatch struct {
	mu      sync.Mutex
	vms     map[string]*v1alpha1.MeshVM
	readyAt map[string]time.Time
	// changed is called under no lock after each update.
	hooks []func(old, new *v1alpha1.MeshVM)
}

func (c *ctlLab) watchVMs(ctx context.Context, ns string) (*vmWatch, error) {
	scheme := k8sruntime.NewScheme()
	v1alpha1.AddToScheme(scheme)
	ca, err := cache.New(c.rc, cache.Options{Scheme: scheme, DefaultNamespaces: map[string]cache.Config{ns: {}}})
	if err != nil {
		return nil, err
	}
	inf, err := ca.GetInformer(ctx, &v1alpha1.MeshVM{})
	if err != nil {
		return nil, err
	}
	w := &vmWatch{vms: map[string]*v1alpha1.MeshVM{}, readyAt: map[string]time.Time{}}
	update := func(old, obj any) {
		vm, ok := obj.(*v1alpha1.MeshVM)
		if !ok {
			return
		}
		was, _ := old.(*v1alpha1.MeshVM)
		now := time.Now()
		w.mu.Lock()
		w.vms[vm.Name] = vm
		if _, seen := w.readyAt[vm.Name]; !seen && condition(vm, v1alpha1.ConditionReady) == metav1.ConditionTrue {
			w.readyAt[vm.Name] = now
		}
		hooks := w.hooks
		w.mu.Unlock()
		for _, h := range hooks {
			h(was, vm)
		}
	}
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { update(nil, obj) },
		UpdateFunc: update,
	}); err != nil {
		return nil, err
	}
	go ca.Start(ctx)
	if !ca.WaitForCacheSync(ctx) {
		return nil, fmt.Errorf("MeshVM informer never synced")
	}
	return w, nil
}

func (w *vmWatch) hook(h func(old, new *v1alpha1.MeshVM)) {
	w.mu.Lock()
	w.hooks = append(w.hooks, h)
	w.mu.Unlock()
}

func (w *vmWatch) count(ok func(*v1alpha1.MeshVM) bool) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, vm := range w.vms {
		if ok(vm) {
			n++
		}
	}
	return n
}

func (w *vmWatch) get(name string) *v1alpha1.MeshVM {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.vms[name]
}

func condition(vm *v1alpha1.MeshVM, typ string) metav1.ConditionStatus {
	for _, c := range vm.Status.Conditions {
		if c.Type == typ {
			return c.Status
		}
	}
	return ""
}

// waitFor polls until ok or the deadline; it returns the time it took and
// whether it held.
func waitFor(within time.Duration, ok func() bool) (time.Duration, bool) {
	start := time.Now()
	for {
		if ok() {
			return time.Since(start), true
		}
		if time.Since(start) > within {
			return time.Since(start), false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ctlResult is one size's controller figures.
type ctlResult struct {
	n                  int
	ready              time.Duration
	readyCount         int
	readyP50, readyP99 time.Duration
	onboard            counts
	onboardServer      map[string]int
	atRestServer       map[string]int
	atRest             counts
	atRestFor          time.Duration
	cpu                float64
	rss                int64
	// The leader's peak RSS and its Go runtime at rest (heap and stacks in
	// use, goroutines); the API server's and etcd's RSS at rest and peak,
	// and the bench's own (the simulated agents).
	peakRSS, goHeap, goStack int64
	goroutines               int
	apiRSS, apiPeak          int64
	etcdRSS, etcdPeak        int64
	benchRSS                 int64
	profile                  string
	onboardErrs              map[string]int
	// restChanges are the MeshVMs' status changes seen at rest, by what changed.
	restChanges            map[string]int
	streams                int
	stopSeen               []time.Duration
	stopStatus, stopMissed int
	rotated                int
	rotation               time.Duration
	rotationRestarts       int
	rotationLeftHealthy    int
	rotationCounts         counts
	elected, reconciling   time.Duration
	streamsBack            time.Duration
	streamsBackCount       int
	failover               counts
	// The leader killed mid-rotation: rotated before the kill, in all,
	// and how long the whole rotation took.
	midKilledAt, midRotated int
	midRotation             time.Duration
	err                     error
}

func (l *lab) controllerSize(ctx context.Context, c *ctlLab, cc ctlConfig, n int, first netip.Addr, port int) (r ctlResult) {
	r.n = n
	fmt.Fprintf(os.Stderr, "fleetbench: controller rows, %d VMs from %s\n", n, first)
	var f *fleet
	var err error
	restarts := &restartCount{}
	f, _, err = l.startFleetWith(ctx, n, first, func(name, addr, ns string) ([]byte, []byte, []byte, error) {
		id, err := fleetstore.New(ctx, l.admin.Kube, ctlNS, ns).AgentIdentity(name, []string{addr})
		return id.Cert, id.Key, id.ClientCA, err
	}, restarts.see)
	if err != nil {
		r.err = err
		return r
	}
	defer f.close()
	dir := filepath.Join(l.dir, "controllers", f.spec.Namespace)
	a, err := c.startReplica(dir, "a", port, cc)
	if err != nil {
		r.err = err
		return r
	}
	defer a.kill()
	if _, ok := waitFor(2*cc.lease+30*time.Second, a.leading); !ok {
		r.err = fmt.Errorf("controller a never leads")
		return r
	}
	b, err := c.startReplica(dir, "b", port+3, cc)
	if err != nil {
		r.err = err
		return r
	}
	defer b.kill()
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	w, err := c.watchVMs(wctx, f.spec.Namespace)
	if err != nil {
		r.err = err
		return r
	}
	defer func() {
		// The replicas first: a live one puts its finalizer back.
		a.kill()
		b.kill()
		c.cleanup(f)
	}()

	// 1. N MeshVMs applied at once.
	before, server0 := a.counts(), l.serverWrites(ctx)
	errs0 := labeled(must(a.scrape()), "meshvm_reconcile_errors_total", "reason")
	start := time.Now()
	if err := eachVM(f.names, func(name string) error {
		app := true
		return c.cl.Create(ctx, &v1alpha1.MeshVM{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: f.spec.Namespace},
			Spec: v1alpha1.MeshVMSpec{Address: f.addrs[name], WorkloadGroup: f.spec.Group, Network: f.spec.Network, App: &app}})
	}); err != nil {
		r.err = err
		return r
	}
	ready := func(vm *v1alpha1.MeshVM) bool { return condition(vm, v1alpha1.ConditionReady) == metav1.ConditionTrue }
	r.ready, _ = waitFor(cc.budget, func() bool { return w.count(ready) == n })
	r.readyCount = w.count(ready)
	var per []time.Duration
	w.mu.Lock()
	for _, t := range w.readyAt {
		per = append(per, t.Sub(start))
	}
	w.mu.Unlock()
	r.readyP50, r.readyP99 = measure.Percentile(per, 50), measure.Percentile(per, 99)
	r.onboard, r.onboardServer = a.counts().since(before), measure.Since(l.serverWrites(ctx), server0)
	if m, err := a.scrape(); err == nil {
		r.onboardErrs = measure.Since(labeled(m, "meshvm_reconcile_errors_total", "reason"), errs0)
	}
	fmt.Fprintf(os.Stderr, "fleetbench: %d/%d Ready after %s; controller writes %v\n", r.readyCount, n, r.ready.Round(time.Millisecond), r.onboard.method)
	if r.readyCount < n {
		// The rows go on: at rest, failover and the rest with the VMs as they are.
		r.err = fmt.Errorf("%d of %d Ready within %s (the rows after it are of that fleet)", r.readyCount, n, cc.budget)
	}
	streamOpen := func(vm *v1alpha1.MeshVM) bool { return strings.HasPrefix(vm.Status.Agent, "connected ") }
	waitFor(time.Minute, func() bool { return w.count(streamOpen) == n })

	// 2. At rest, measured on the leader: b when a lost its Lease (a
	// starved machine renews late), which the row then says.
	time.Sleep(5 * time.Second)
	lead := a
	if !a.leading() && b.leading() {
		lead = b
		r.err = fmt.Errorf("replica a lost its Lease while onboarding (see its log); b leads: the rows after the rest are skipped")
	}
	pid := lead.cmd.Process.Pid
	changes := &changeCount{by: map[string]int{}}
	w.hook(changes.see)
	before, server0 = lead.counts(), l.serverWrites(ctx)
	cpu0, err := measure.CPU(pid)
	if err != nil {
		r.err = fmt.Errorf("the leader is gone: %w", err)
		return r
	}
	time.Sleep(cc.atRest)
	r.atRest, r.atRestFor, r.atRestServer = lead.counts().since(before), cc.atRest, measure.Since(l.serverWrites(ctx), server0)
	cpu1, err := measure.CPU(pid)
	if err != nil {
		r.err = fmt.Errorf("the leader exited at rest: %w", err)
		return r
	}
	r.cpu = float64(cpu1-cpu0) / float64(cc.atRest)
	r.restChanges = changes.snapshot()
	w.mu.Lock()
	w.hooks = w.hooks[:0]
	w.mu.Unlock()
	r.rss = must(measure.RSS(pid))
	r.peakRSS = must(measure.PeakRSS(pid))
	r.streams = w.count(streamOpen)
	if m, err := lead.scrape(); err == nil {
		r.goHeap, r.goStack, r.goroutines = int64(m["go_memstats_heap_inuse_bytes"]), int64(m["go_memstats_stack_inuse_bytes"]), int(m["go_goroutines"])
	}
	r.apiRSS, r.apiPeak = c.procMemory("kube-apiserver")
	r.etcdRSS, r.etcdPeak = c.procMemory("etcd")
	r.benchRSS = must(measure.RSS(0))
	if cc.profileDir != "" {
		r.profile = filepath.Join(cc.profileDir, fmt.Sprintf("controller-heap-%d.pb.gz", n))
		if err := lead.heapProfile(r.profile); err != nil {
			fmt.Fprintf(os.Stderr, "fleetbench: %v\n", err)
			r.profile = ""
		}
	}
	fmt.Fprintf(os.Stderr, "fleetbench: at rest %s: writes %d, CPU %.1f %%, RSS %s, %d streams\n", cc.atRest, r.atRest.writes(), 100*r.cpu, measure.MiB(r.rss), r.streams)

	if cc.restOnly || lead != a {
		return r
	}

	// 3. A sidecar stopped on one VM → its MeshVM's status (or the
	// controller starting it again, which may come first), one VM at a time.
	for _, vm := range spread(f.sim.VMs, min(cc.trials, n)) {
		name := vm.Name
		seen := make(chan bool, 2)
		var once sync.Once
		h := func(old, m *v1alpha1.MeshVM) {
			if m.Name == name && (m.Status.Sidecar != "active" || condition(m, v1alpha1.ConditionSidecarRunning) != metav1.ConditionTrue) {
				once.Do(func() { seen <- true })
			}
		}
		w.hook(h)
		stopped, err := vm.StopSidecar()
		t0 := time.Now()
		if err != nil {
			r.err = err
			return r
		}
		restarted := restarts.expect(name, stopped.MainPID)
		select {
		case <-seen:
			r.stopSeen = append(r.stopSeen, time.Since(t0))
			r.stopStatus++
		case <-restarted:
			r.stopSeen = append(r.stopSeen, time.Since(t0))
		case <-time.After(30 * time.Second):
			r.stopMissed++
		}
		w.mu.Lock()
		w.hooks = w.hooks[:0]
		w.mu.Unlock()
		if _, ok := waitFor(30*time.Second, func() bool {
			m := w.get(name)
			return vm.Sidecar().Active() && m != nil && ready(m)
		}); !ok {
			vm.StartSidecar()
		}
	}
	fmt.Fprintf(os.Stderr, "fleetbench: sidecar stopped → seen p99 %s (%d in the status, %d missed)\n", measure.Percentile(r.stopSeen, 99), r.stopStatus, r.stopMissed)

	// 4. A forced rotation of every token.
	expires := map[string]time.Time{}
	w.mu.Lock()
	for name, vm := range w.vms {
		if vm.Status.TokenExpiresAt != nil {
			expires[name] = vm.Status.TokenExpiresAt.Time
		}
	}
	w.mu.Unlock()
	rotated := func(vm *v1alpha1.MeshVM) bool {
		was, ok := expires[vm.Name]
		return ok && vm.Status.TokenExpiresAt != nil && !vm.Status.TokenExpiresAt.Time.Equal(was)
	}
	// The trials' last VMs settle first (their Healthy flips come after the
	// sidecar is back, as the stand-in reconnects).
	healthy := func(vm *v1alpha1.MeshVM) bool {
		return ready(vm) && condition(vm, v1alpha1.ConditionHealthy) == metav1.ConditionTrue
	}
	waitFor(time.Minute, func() bool { return w.count(healthy) == n })
	time.Sleep(5 * time.Second)
	left := map[string]bool{}
	var lmu sync.Mutex
	w.hook(func(old, m *v1alpha1.MeshVM) {
		if old != nil && condition(old, v1alpha1.ConditionHealthy) == metav1.ConditionTrue && condition(m, v1alpha1.ConditionHealthy) != metav1.ConditionTrue {
			lmu.Lock()
			left[m.Name] = true
			lmu.Unlock()
		}
	})
	restarts.reset()
	time.Sleep(2 * time.Second) // expiry is kept to the second
	before = a.counts()
	value := time.Now().UTC().Format(time.RFC3339Nano)
	start = time.Now()
	patch := []byte(fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, renewAnnotation, value))
	renewAll(ctx, c.cl, f, patch)
	waitFor(cc.budget, func() bool { return w.count(rotated) == n })
	r.rotation = time.Since(start)
	r.rotated = w.count(rotated)
	r.rotationCounts = a.counts().since(before)
	r.rotationRestarts = restarts.n()
	time.Sleep(2 * time.Second)
	lmu.Lock()
	r.rotationLeftHealthy = len(left)
	lmu.Unlock()
	fmt.Fprintf(os.Stderr, "fleetbench: rotation: %d/%d in %s, %d sidecar restarts, %d left Healthy\n", r.rotated, n, r.rotation.Round(time.Millisecond), r.rotationRestarts, r.rotationLeftHealthy)

	// 5. The leader killed.
	waitFor(time.Minute, func() bool { return w.count(streamOpen) == n })
	beforeB := b.counts()
	recB := b.reconciles()
	killed := time.Now()
	a.kill()
	if _, ok := waitFor(2*cc.lease+time.Minute, b.leading); ok {
		r.elected = time.Since(killed)
	}
	if _, ok := waitFor(time.Minute, func() bool { return b.reconciles() > recB }); ok {
		r.reconciling = time.Since(killed)
	}
	if _, ok := waitFor(2*time.Minute, func() bool { return b.streams() == n }); ok {
		r.streamsBack = time.Since(killed)
	}
	r.streamsBackCount = b.streams()
	time.Sleep(2 * time.Second)
	r.failover = b.counts().since(beforeB)
	fmt.Fprintf(os.Stderr, "fleetbench: failover: elected %s, reconciling %s, %d/%d streams back in %s; codes %v\n", r.elected.Round(time.Millisecond),
		r.reconciling.Round(time.Millisecond), r.streamsBackCount, n, r.streamsBack.Round(time.Millisecond), r.failover.code)

	// 6. The leader killed mid-rotation: the other replica (a, started
	// again as the standby) must rotate every token the killed one had not.
	if r.rotated < n {
		return r // no forced rotation in this controller
	}
	a2, err := c.startReplica(dir, "a2", port+6, cc)
	if err != nil {
		r.err = err
		return r
	}
	defer a2.kill()
	time.Sleep(2 * time.Second)
	w.mu.Lock()
	for name, vm := range w.vms {
		if vm.Status.TokenExpiresAt != nil {
			expires[name] = vm.Status.TokenExpiresAt.Time
		}
	}
	w.mu.Unlock()
	value = "mid-" + time.Now().UTC().Format(time.RFC3339Nano)
	patch = []byte(fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, renewAnnotation, value))
	start = time.Now()
	renewAll(ctx, c.cl, f, patch)
	waitFor(cc.budget, func() bool { return w.count(rotated) >= n/3 })
	r.midKilledAt = w.count(rotated)
	b.kill()
	waitFor(cc.budget+2*cc.lease, func() bool { return w.count(rotated) == n })
	r.midRotation, r.midRotated = time.Since(start), w.count(rotated)
	fmt.Fprintf(os.Stderr, "fleetbench: leader killed mid-rotation at %d/%d: %d/%d rotated in %s\n", r.midKilledAt, n, r.midRotated, n, r.midRotation.Round(time.Millisecond))
	return r
}

// changeCount counts MeshVM status changes by what changed: a condition
// (its type, and its reason before → after, or "message" or "time" when
// only those moved) or a status field.
type changeCount struct {
	mu sync.Mutex
	by map[string]int
}

func (c *changeCount) see(old, m *v1alpha1.MeshVM) {
	if old == nil || reflect.DeepEqual(old.Status, m.Status) {
		return
	}
	var what []string
	for _, nc := range m.Status.Conditions {
		var oc *metav1.Condition
		for i := range old.Status.Conditions {
			if old.Status.Conditions[i].Type == nc.Type {
				oc = &old.Status.Conditions[i]
			}
		}
		switch {
		case oc == nil:
			what = append(what, nc.Type+" set")
		case oc.Status != nc.Status || oc.Reason != nc.Reason:
			what = append(what, fmt.Sprintf("%s %s/%s→%s/%s", nc.Type, oc.Status, oc.Reason, nc.Status, nc.Reason))
		case oc.Message != nc.Message:
			what = append(what, nc.Type+" message")
		case !oc.LastTransitionTime.Equal(&nc.LastTransitionTime) || oc.ObservedGeneration != nc.ObservedGeneration:
			what = append(what, nc.Type+" time/generation")
		}
	}
	o, n := old.Status, m.Status
	o.Conditions, n.Conditions = nil, nil
	ov, nv := reflect.ValueOf(o), reflect.ValueOf(n)
	for i := range ov.NumField() {
		if !reflect.DeepEqual(ov.Field(i).Interface(), nv.Field(i).Interface()) {
			what = append(what, "status."+ov.Type().Field(i).Name)
		}
	}
	sort.Strings(what)
	c.mu.Lock()
	c.by[strings.Join(what, ", ")]++
	c.mu.Unlock()
}

func (c *changeCount) snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.by)
}

// eachVM calls do for every name, 32 at once (as many clients applying
// their MeshVMs); it returns the last error.
func eachVM(names []string, do func(name string) error) error {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var last error
	ch := make(chan string)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for name := range ch {
				if err := do(name); err != nil {
					mu.Lock()
					last = err
					mu.Unlock()
				}
			}
		}()
	}
	for _, name := range names {
		ch <- name
	}
	close(ch)
	wg.Wait()
	return last
}

// renewAll asks for a fresh token on every MeshVM of the fleet.
func renewAll(ctx context.Context, cl client.Client, f *fleet, patch []byte) error {
	return eachVM(f.names, func(name string) error {
		return cl.Patch(ctx, &v1alpha1.MeshVM{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: f.spec.Namespace}}, client.RawPatch(types.MergePatchType, patch))
	})
}

// cleanup takes the size's MeshVMs away once its controllers are gone: the
// finalizer dropped (no agent left to undo anything) and each deleted.
func (c *ctlLab) cleanup(f *fleet) {
	ctx := context.Background()
	eachVM(f.names, func(name string) error {
		m := &v1alpha1.MeshVM{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: f.spec.Namespace}}
		c.cl.Patch(ctx, m, client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`)))
		return c.cl.Delete(ctx, m)
	})
}

// restartCount sees the sidecars' units: starts with a new main PID.
type restartCount struct {
	mu       sync.Mutex
	pids     map[string]uint32
	restarts int
	waiting  map[string]chan struct{}
}

func (r *restartCount) see(vm *agentsim.VM, u agentsim.Unit) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pids == nil {
		r.pids = map[string]uint32{}
	}
	if !u.Active() {
		return
	}
	if was, ok := r.pids[vm.Name]; ok && was != u.MainPID {
		r.restarts++
		if ch, ok := r.waiting[vm.Name]; ok {
			close(ch)
			delete(r.waiting, vm.Name)
		}
	}
	r.pids[vm.Name] = u.MainPID
}

// expect is closed when VM name's sidecar runs again with a PID other than pid.
func (r *restartCount) expect(name string, pid uint32) <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.waiting == nil {
		r.waiting = map[string]chan struct{}{}
	}
	ch := make(chan struct{})
	r.pids[name] = pid
	r.waiting[name] = ch
	return ch
}

func (r *restartCount) reset() {
	r.mu.Lock()
	r.restarts = 0
	r.mu.Unlock()
}

func (r *restartCount) n() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.restarts
}

// mib is b in MiB, or "-" when it was not measured.
func mib(b int64) string {
	if b == 0 {
		return "-"
	}
	return measure.MiB(b)
}

func reportController(out io.Writer, cc ctlConfig, rows []ctlResult) {
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(out, "\ncontroller: the real controller binary, 2 replicas (leader election: lease %s, renew %s, retry %s), --workers %d, --kube-api-qps %.0f, burst %d;\n",
		cc.lease, cc.renew, cc.retry, cc.workers, cc.qps, cc.burst)
	fmt.Fprintln(out, "API requests from the controller's own client-go metrics (rest_client_requests_total, by method and code, Events included)")
	cols := func(f func(r ctlResult) string) string {
		var b strings.Builder
		for _, r := range rows {
			fmt.Fprintf(&b, "%-24s", f(r))
		}
		return b.String()
	}
	line := func(name, goal string, f func(r ctlResult) string) {
		fmt.Fprintf(out, "%-52s %s %s\n", name, cols(f), goal)
	}
	per := func(x, n int) string { return fmt.Sprintf("%.2f", float64(x)/float64(n)) }
	line("", "goal (issue 23)", func(r ctlResult) string { return fmt.Sprintf("N=%d", r.n) })
	line("MeshVMs applied at once → all Ready", "≤ 60 s at 1,000", func(r ctlResult) string {
		if r.readyCount < r.n {
			return fmt.Sprintf("%d/%d in %s", r.readyCount, r.n, cc.budget)
		}
		return r.ready.Round(time.Millisecond).String()
	})
	line("  per VM Ready, p50 / p99", "", func(r ctlResult) string {
		return fmt.Sprintf("%s / %s", r.readyP50.Round(time.Millisecond), r.readyP99.Round(time.Millisecond))
	})
	line("  API writes per VM to onboard", "≤ 4", func(r ctlResult) string { return per(r.onboard.writes(), r.n) })
	line("  ... by method, per VM", "", func(r ctlResult) string {
		return fmt.Sprintf("P %s U %s Pa %s D %s", per(r.onboard.method["POST"], r.n), per(r.onboard.method["PUT"], r.n), per(r.onboard.method["PATCH"], r.n), per(r.onboard.method["DELETE"], r.n))
	})
	line("  API reads per VM to onboard (GET)", "", func(r ctlResult) string { return per(r.onboard.method["GET"], r.n) })
	line("  failed passes / API answers not 2xx, onboarding", "", func(r ctlResult) string {
		failed, not2xx := 0, 0
		for _, v := range r.onboardErrs {
			failed += v
		}
		for code, v := range r.onboard.code {
			if !strings.HasPrefix(code, "2") {
				not2xx += v
			}
		}
		return fmt.Sprintf("%d / %d", failed, not2xx)
	})
	line("at rest: the controller's writes per VM", "0", func(r ctlResult) string { return fmt.Sprintf("%s in %s", per(r.atRest.writes(), r.n), r.atRestFor) })
	line("  ... all clients, less Leases (API server count)", "", func(r ctlResult) string {
		w := 0
		for k, v := range r.atRestServer {
			if !strings.HasSuffix(k, " leases") {
				w += v
			}
		}
		return per(w, r.n)
	})
	line("  reads per VM", "", func(r ctlResult) string { return per(r.atRest.method["GET"], r.n) })
	line("  leader's CPU / RSS", "< 10 % core, ≤ 300 MiB", func(r ctlResult) string {
		return fmt.Sprintf("%.1f %% / %s", 100*r.cpu, measure.MiB(r.rss))
	})
	line("  leader's peak RSS (VmHWM, onboarding included)", "", func(r ctlResult) string { return measure.MiB(r.peakRSS) })
	line("  leader's Go heap / stacks in use, goroutines", "", func(r ctlResult) string {
		return fmt.Sprintf("%s / %s, %d", mib(r.goHeap), mib(r.goStack), r.goroutines)
	})
	line("  API server RSS at rest / peak", "", func(r ctlResult) string { return mib(r.apiRSS) + " / " + mib(r.apiPeak) })
	line("  etcd RSS at rest / peak", "", func(r ctlResult) string { return mib(r.etcdRSS) + " / " + mib(r.etcdPeak) })
	line("  bench RSS (the N agents, pilots, watch)", "", func(r ctlResult) string { return mib(r.benchRSS) })
	line("  streams open (AGENT connected)", "", func(r ctlResult) string { return fmt.Sprintf("%d/%d", r.streams, r.n) })
	if cc.restOnly {
		fmt.Fprintln(out, "sidecar stopped, forced rotation, leader killed: not run (-controller-rest-only)")
	} else {
		line(fmt.Sprintf("sidecar stopped → MeshVM, p50 / p99 (%d trials)", cc.trials), "p99 ≤ 2 s", func(r ctlResult) string {
			return fmt.Sprintf("%s / %s", measure.Percentile(r.stopSeen, 50).Round(time.Millisecond), measure.Percentile(r.stopSeen, 99).Round(time.Millisecond))
		})
		line("  ... seen in the status / restarted first / missed", "", func(r ctlResult) string {
			return fmt.Sprintf("%d / %d / %d", r.stopStatus, len(r.stopSeen)-r.stopStatus, r.stopMissed)
		})
		line("forced rotation (meshvm.io/renew) → all new tokens", "≤ 60 s at 1,000", func(r ctlResult) string {
			if r.rotated < r.n {
				return fmt.Sprintf("%d/%d in %s", r.rotated, r.n, cc.budget)
			}
			return r.rotation.Round(time.Millisecond).String()
		})
		line("  sidecar restarts / VMs leaving Healthy", "0 / 0", func(r ctlResult) string {
			return fmt.Sprintf("%d / %d", r.rotationRestarts, r.rotationLeftHealthy)
		})
		line("  API writes per VM", "", func(r ctlResult) string { return per(r.rotationCounts.writes(), r.n) })
		line("leader killed (SIGKILL) → other replica leads", "", func(r ctlResult) string { return r.elected.Round(time.Millisecond).String() })
		line("  ... reconciling", "≤ 20 s", func(r ctlResult) string {
			if r.reconciling == 0 {
				return "never"
			}
			return r.reconciling.Round(time.Millisecond).String()
		})
		line("  every stream back (meshvm_agent_streams)", "≤ 60 s", func(r ctlResult) string {
			if r.streamsBackCount < r.n {
				return fmt.Sprintf("%d/%d", r.streamsBackCount, r.n)
			}
			return r.streamsBack.Round(time.Millisecond).String()
		})
		line("  429s / conflicts (of writes)", "0 / < 1 %", func(r ctlResult) string {
			w := r.failover.writes()
			return fmt.Sprintf("%d / %d of %d", r.failover.code["429"], r.failover.code["409"], w)
		})
		line("leader killed mid-rotation (at k rotated) → all", "no token left unrotated", func(r ctlResult) string {
			if r.midKilledAt == 0 {
				return "-"
			}
			return fmt.Sprintf("at %d: %d/%d in %s", r.midKilledAt, r.midRotated, r.n, r.midRotation.Round(time.Second))
		})
	}
	for _, r := range rows {
		fmt.Fprintf(out, "N=%d: writes per VM at the API server (all clients: the bench's creates, the istiod stand-in's entries), onboarding: %s\n", r.n, perVMSorted(r.onboardServer, r.n))
		fmt.Fprintf(out, "N=%d: ... at rest: %s\n", r.n, perVMSorted(r.atRestServer, r.n))
		if len(r.restChanges) > 0 {
			fmt.Fprintf(out, "N=%d: MeshVM status changes at rest, by what changed: %s\n", r.n, countsSorted(r.restChanges))
		}
	}
	for _, r := range rows {
		if len(r.onboardErrs) > 0 {
			fmt.Fprintf(out, "N=%d: failed passes while onboarding, by reason: %v; API answers by code: %v\n", r.n, r.onboardErrs, r.onboard.code)
		}
		if r.profile != "" {
			fmt.Fprintf(out, "N=%d: the leader's heap profile at rest: %s (go tool pprof -top %s)\n", r.n, r.profile, r.profile)
		}
	}
	for _, r := range rows {
		if r.err != nil {
			fmt.Fprintf(out, "N=%d: stopped early: %v\n", r.n, r.err)
		}
	}
}
