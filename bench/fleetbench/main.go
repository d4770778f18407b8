// fleetbench measures fleet mode's scale harness on this machine (issue
// 23): N simulated VMs (vmagent/agentsim: the real agent, guard and mTLS on
// loopback, one address each; systemd and the app stood in), the lab's real
// kube-apiserver and etcd, and istiod's autoregistration stood in
// (pkg/mesh/autoregsim). For each N it prints:
//
//   - the agents' memory;
//   - agentwatch holding a stream to every agent: time until all are open,
//     the watching process's RSS and CPU at rest, and a sidecar stopped on
//     one VM until the watcher sees it (p50/p99), against the baseline of
//     GetStatus polled at the controller's resync period;
//   - the core (vmcore.Reconcile, a DirStore) onboarding every VM until its
//     WorkloadEntry is Healthy: the time, and API requests per VM by verb,
//     against the baseline of one pass at a time (controller-runtime's
//     default of one worker) on 100 VMs.
//
// Run it with `make bench-fleet` (root). Its control plane listens on its own
// ports, so it runs beside the lab tests.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	istioclient "istio.io/client-go/pkg/clientset/versioned"

	"github.com/meshvm/meshvm/bench/internal/measure"
	"github.com/meshvm/meshvm/lab/build"
	"github.com/meshvm/meshvm/lab/cluster"
	"github.com/meshvm/meshvm/lab/stack"
	"github.com/meshvm/meshvm/pkg/host/statedir"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/machine/machinesim"
	"github.com/meshvm/meshvm/pkg/mesh/autoregsim"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
	"github.com/meshvm/meshvm/pkg/mtls"
	"github.com/meshvm/meshvm/vmagent/agentsim"
)

const clusterID = "fleetbench"

type config struct {
	sizes        []int
	trials       int
	pollTrials   int
	workers      int
	qps          float64
	burst        int
	poll, atRest time.Duration
	budget       time.Duration
	entryCache   bool
	core         bool
	controller   bool
	ctl          ctlConfig
}

func main() {
	child := flag.String("watch-child", "", "internal: run as the watching process with this plan")
	vms := flag.String("vms", "100,1000", "fleet sizes, comma-separated")
	trials := flag.Int("trials", 100, "sidecar-stop trials through Watch, one VM at a time")
	pollTrials := flag.Int("poll-trials", 20, "sidecar-stop trials of the polling baseline")
	workers := flag.Int("workers", 4, "passes at once (the controller's --workers default)")
	qps := flag.Float64("kube-api-qps", 50, "the core's client-side API rate (the controller's default)")
	burst := flag.Int("kube-api-burst", 100, "the core's API burst (the controller's default)")
	poll := flag.Duration("poll", time.Minute, "the baseline's GetStatus period (the controller's resync)")
	atRest := flag.Duration("at-rest", 10*time.Second, "how long the watching side is measured at rest")
	budget := flag.Duration("onboard-budget", 5*time.Minute, "how long onboarding may take before the VMs not Healthy are counted and the run goes on")
	rows := flag.String("rows", "core,controller", "which rows: core (agentwatch and the core driven by the bench), controller (the controller binary, 2 replicas), or both")
	ctlVMs := flag.String("controller-vms", "", "fleet sizes of the controller rows (default: -vms); 5000 is the stretch row")
	ctlAtRest := flag.Duration("controller-at-rest", time.Minute, "how long the controller is measured at rest (the README's figure: 10m)")
	ctlBudget := flag.Duration("controller-budget", 3*time.Minute, "how long all Ready (or all rotated) may take before the row says how far it got")
	ctlQueueQPS := flag.Float64("queue-qps", 0, "the controller's --queue-qps (0: its default)")
	ctlQueueBurst := flag.Int("queue-burst", 0, "the controller's --queue-burst")
	lease := flag.Duration("lease-duration", 15*time.Second, "the replicas' --leader-elect-lease-duration (controller-runtime's default)")
	restOnly := flag.Bool("controller-rest-only", false, "stop each controller row after the rest: onboarding, memory and at-rest figures, no sidecar, rotation or failover rows (a quicker run, e.g. the 5,000 stretch row)")
	profileDir := flag.String("profile-dir", "", "where the controller rows write the leader's heap profile after the rest (default: none)")
	entryCache := flag.Bool("entry-cache", false, "serve the core's WorkloadEntry lists from an informer (what a controller's cached client would), instead of a LIST per lookup as vmcore does today")
	flag.Parse()
	if *child != "" {
		if err := watchChild(*child); err != nil {
			fmt.Fprintln(os.Stderr, "fleetbench watcher:", err)
			os.Exit(1)
		}
		return
	}
	cc := ctlConfig{atRest: *ctlAtRest, budget: *ctlBudget, trials: *trials, workers: *workers, qps: *qps, burst: *burst,
		queueQPS: *ctlQueueQPS, queueBurst: *ctlQueueBurst, lease: *lease, renew: *lease * 2 / 3, retry: *lease * 2 / 15, profileDir: *profileDir, restOnly: *restOnly}
	c := config{trials: *trials, pollTrials: *pollTrials, workers: *workers, qps: *qps, burst: *burst, poll: *poll, atRest: *atRest, budget: *budget, entryCache: *entryCache}
	c.sizes = sizes("-vms", *vms)
	if *ctlVMs == "" {
		*ctlVMs = *vms
	}
	cc.sizes = sizes("-controller-vms", *ctlVMs)
	for _, r := range strings.Split(*rows, ",") {
		switch strings.TrimSpace(r) {
		case "core":
			c.core = true
		case "controller":
			c.controller = true
		default:
			fmt.Fprintf(os.Stderr, "fleetbench: -rows %q: want core, controller or core,controller\n", *rows)
			os.Exit(2)
		}
	}
	c.ctl = cc
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, "fleetbench:", err)
		os.Exit(1)
	}
}

// sizes parses a flag's comma-separated fleet sizes, or exits saying what is wrong.
func sizes(flagName, v string) []int {
	var out []int
	for _, s := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > 60000 {
			fmt.Fprintf(os.Stderr, "fleetbench: %s %q: want sizes from 1 to 60000, comma-separated\n", flagName, v)
			os.Exit(2)
		}
		out = append(out, n)
	}
	return out
}

// lab is the control plane and what every size shares.
type lab struct {
	dir          string
	admin        workload.Clients
	core         workload.Clients // counted, at the controller's rate
	coreCount    *measure.APICounter
	standIn      workload.Clients // istiod's own client and rate
	standInCount *measure.APICounter
	store        vmcore.DirStore
	ca           *mtls.CA
	client       statedir.Pair
	mesh         simMesh
}

func run(c config) error {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "fleetbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	moduleDir, err := build.ModuleDir()
	if err != nil {
		return err
	}
	cfg := stack.Config{ModuleDir: moduleDir, CacheDir: build.DefaultCacheDir(), Dir: filepath.Join(dir, "lab"), Progress: os.Stderr,
		Istio: istioinstall.Options{MeshID: "mesh1", ClusterName: clusterID, Network: "kube-network"},
		// Its own ports: the bench runs beside the lab tests, not under their lock.
		Ports: cluster.Ports{API: 30643, Etcd: 30644, EtcdPeer: 30645, Controller: 20257}}
	st, err := stack.UpCluster(ctx, cfg)
	if err != nil {
		return err
	}
	defer stack.Down(context.Background(), cfg.Dir, false)
	// Interrupted: stop the control plane it started, or its processes outlive it.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		stack.Down(context.Background(), cfg.Dir, false)
		os.RemoveAll(dir)
		os.Exit(130)
	}()
	if err := stack.InstallIstioAPI(ctx, cfg, st); err != nil {
		return err
	}
	l := &lab{dir: dir, coreCount: &measure.APICounter{}, standInCount: &measure.APICounter{}}
	if l.admin, err = clients(st.Kubeconfig, 100, 200, nil); err != nil {
		return err
	}
	if l.core, err = clients(st.Kubeconfig, float32(c.qps), c.burst, l.coreCount); err != nil {
		return err
	}
	// istiod's --kubernetesApiQPS and --kubernetesApiBurst defaults.
	if l.standIn, err = clients(st.Kubeconfig, 80, 160, l.standInCount); err != nil {
		return err
	}
	sd, err := statedir.Open(filepath.Join(dir, "state"))
	if err != nil {
		return err
	}
	l.store = vmcore.DirStore{Dir: sd}
	if l.ca, err = sd.AgentCA(); err != nil {
		return err
	}
	if l.client, err = sd.ClientCert(l.ca); err != nil {
		return err
	}
	side, err := standInSidecar(filepath.Join(dir, "sidecar"), 4<<10)
	if err != nil {
		return err
	}
	l.mesh = simMesh{side}

	var ctlRows []ctlResult
	if c.controller {
		cl, err := l.controllerSetup(ctx, cfg, st)
		if err != nil {
			return err
		}
		for i, n := range c.ctl.sizes {
			// Ports from 20480, 10 a size: 3 replicas of 3 each.
			ctlRows = append(ctlRows, l.controllerSize(ctx, cl, c.ctl, n, netip.AddrFrom4([4]byte{127, byte(100 + i), 0, 1}), 20480+10*i))
		}
		if !c.core {
			reportController(os.Stdout, c.ctl, ctlRows)
			return nil
		}
	}
	var rows []sizeResult
	for i, n := range c.sizes {
		r, err := l.size(ctx, c, n, netip.AddrFrom4([4]byte{127, byte(1 + i), 0, 1}), c.workers)
		if err != nil {
			return fmt.Errorf("%d VMs: %w", n, err)
		}
		rows = append(rows, r)
	}
	// The baseline of onboarding: one pass at a time.
	serialN := min(100, c.sizes[0])
	serial, err := l.onboardOnly(ctx, c, serialN, netip.AddrFrom4([4]byte{127, byte(1 + len(c.sizes)), 0, 1}), 1)
	if err != nil {
		return fmt.Errorf("baseline: %w", err)
	}
	report(os.Stdout, c, rows, serialN, serial)
	reportController(os.Stdout, c.ctl, ctlRows)
	return nil
}

func clients(kubeconfig string, qps float32, burst int, count *measure.APICounter) (workload.Clients, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return workload.Clients{}, err
	}
	rc.QPS, rc.Burst = qps, burst
	if count != nil {
		rc.Wrap(count.Wrap)
	}
	kc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return workload.Clients{}, err
	}
	ic, err := istioclient.NewForConfig(rest.CopyConfig(rc))
	if err != nil {
		return workload.Clients{}, err
	}
	return workload.Clients{Kube: kc, Istio: ic}, nil
}

// sizeResult is one fleet size's figures.
type sizeResult struct {
	n                          int
	agentsUp                   time.Duration
	heapPer100, rssPer100      int64
	streamsOpen                time.Duration
	watchRSS, pollRSS          int64
	watchCPU, pollCPU          float64 // share of one core at rest
	stopSeen, pollSeen         []time.Duration
	harnessRSS                 int64
	onboardErr                 error
	streamHeapPer100           int64
	harnessCPU                 float64
	onboard                    onboardResult
	coreVerbs, standInVerbs    map[string]int
	standInFailures, trialMiss int
}

// fleet is a started simulated fleet with its pilot-agents.
type fleet struct {
	sim    *agentsim.Fleet
	istiod *autoregsim.Istiod
	pilots map[string]*autoregsim.Pilot
	spec   workload.Spec
	names  []string
	addrs  map[string]string
	errs   *errCount
}

type errCount struct {
	mu sync.Mutex
	n  int
	by map[string]int
}

func (e *errCount) add(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.n++
	e.by[fmt.Sprintf("%.100v", err)]++
	if e.n <= 3 {
		fmt.Fprintln(os.Stderr, "fleetbench: pilot-agent stand-in:", err)
	}
}

func (l *lab) startFleet(ctx context.Context, n int, first netip.Addr) (*fleet, time.Duration, error) {
	return l.startFleetWith(ctx, n, first, func(name, addr, _ string) ([]byte, []byte, []byte, error) {
		id, err := l.store.AgentIdentity(name, []string{addr})
		return id.Cert, id.Key, id.ClientCA, err
	}, nil)
}

// startFleetWith starts n VMs whose agents present identity's certificate
// (of VM name at addr, in namespace ns); onUnit, when set, hears every
// change of a sidecar's unit.
func (l *lab) startFleetWith(ctx context.Context, n int, first netip.Addr, identity func(name, addr, ns string) ([]byte, []byte, []byte, error),
	onUnit func(*agentsim.VM, agentsim.Unit)) (*fleet, time.Duration, error) {
	f := &fleet{spec: workload.Spec{Namespace: fmt.Sprintf("fleet%d-%d", n, first.As4()[1]), ServiceAccount: "vmsa", Group: "fleet-app", Port: 8000, PortName: "http",
		Network: "vm-network", ProbePath: "/", ProbePort: 8000, ProbePeriod: 5, ProbeInitialDelay: 1}, addrs: map[string]string{},
		errs: &errCount{by: map[string]int{}}}
	if _, err := workload.Ensure(ctx, l.admin, f.spec); err != nil {
		return nil, 0, err
	}
	if err := autoregsim.PublishRootCert(ctx, l.admin.Kube, f.spec.Namespace, l.ca.CertPEM()); err != nil {
		return nil, 0, err
	}
	f.istiod = autoregsim.New(l.standIn.Istio, autoregsim.Options{Instance: "istiod-standin"})
	var pmu sync.Mutex
	f.pilots = map[string]*autoregsim.Pilot{}
	pilot := func(vm *agentsim.VM) *autoregsim.Pilot {
		pmu.Lock()
		defer pmu.Unlock()
		p, ok := f.pilots[vm.Name]
		if !ok {
			p = f.istiod.Pilot(vm.ReadFile, vm.Address, f.errs.add)
			f.pilots[vm.Name] = p
		}
		return p
	}
	start := time.Now()
	sim, err := agentsim.Start(agentsim.Options{N: n, Dir: filepath.Join(l.dir, "vms", f.spec.Namespace), First: first, AppPort: f.spec.Port,
		Name:     func(i int) string { return fmt.Sprintf("%s-%04d", f.spec.Namespace, i) },
		Identity: func(name, addr string) ([]byte, []byte, []byte, error) { return identity(name, addr, f.spec.Namespace) },
		OnSidecar: func(vm *agentsim.VM, u agentsim.Unit) {
			pilot(vm).Sidecar(u.MainPID)
			if onUnit != nil {
				onUnit(vm, u)
			}
		},
	})
	if err != nil {
		return nil, 0, err
	}
	up := time.Since(start)
	f.sim = sim
	for _, vm := range sim.VMs {
		f.names = append(f.names, vm.Name)
		f.addrs[vm.Name] = vm.Address
	}
	return f, up, nil
}

func (f *fleet) close() {
	var wg sync.WaitGroup
	for _, p := range f.pilots {
		wg.Add(1)
		go func() { defer wg.Done(); p.Close() }()
	}
	wg.Wait()
	f.istiod.Close()
	f.sim.Close()
}

func (l *lab) onboard(ctx context.Context, c config, f *fleet, workers int) (onboardResult, error) {
	store := l.store
	store.VMs = f.names
	octx, cancel := context.WithTimeout(ctx, c.budget)
	defer cancel()
	kube := l.core
	if c.entryCache {
		entries, err := entriesFromInformer(octx, l.core.Istio, f.spec.Namespace)
		if err != nil {
			return onboardResult{}, err
		}
		kube.EntriesAt = entries
	}
	deps := vmcore.Deps{Machines: machinesim.New(f.addrs), Kube: kube, Workload: f.spec}
	target := vmcore.NewTargets(l.mesh, "istio-system", nil).Snapshot(ctx)
	return onboardAll(octx, f.names, f.addrs, workers, target, store, deps, f.spec)
}

func (l *lab) onboardOnly(ctx context.Context, c config, n int, first netip.Addr, workers int) (onboardResult, error) {
	f, _, err := l.startFleet(ctx, n, first)
	if err != nil {
		return onboardResult{}, err
	}
	defer f.close()
	return l.onboard(ctx, c, f, workers)
}

func heap() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse)
}

func (l *lab) size(ctx context.Context, c config, n int, first netip.Addr, workers int) (sizeResult, error) {
	r := sizeResult{n: n}
	fmt.Fprintf(os.Stderr, "fleetbench: %d VMs from %s\n", n, first)
	heap0, rss0 := heap(), must(measure.RSS(0))
	f, up, err := l.startFleet(ctx, n, first)
	if err != nil {
		return r, err
	}
	defer f.close()
	r.agentsUp = up
	heap1, rss1 := heap(), must(measure.RSS(0))
	r.heapPer100, r.rssPer100 = (heap1-heap0)*100/int64(n), (rss1-rss0)*100/int64(n)

	core0, standIn0 := l.coreCount.Snapshot(), l.standInCount.Snapshot()
	if r.onboard, err = l.onboard(ctx, c, f, workers); err != nil {
		// Out of budget: the figures say how far it got; the rest goes on.
		fmt.Fprintf(os.Stderr, "fleetbench: %d VMs: %v\n", n, err)
		r.onboardErr = err
	}
	r.coreVerbs = measure.Since(l.coreCount.Snapshot(), core0)
	r.standInVerbs = measure.Since(l.standInCount.Snapshot(), standIn0)
	r.harnessRSS = must(measure.RSS(0))
	fmt.Fprintf(os.Stderr, "fleetbench: %d of %d VMs Healthy after %s\n", len(r.onboard.PerVM), n, r.onboard.AllHealthy.Round(time.Millisecond))

	plan := watchPlan{Mode: "watch", AppPort: f.spec.Port, CA: l.ca.CertPEM(), Cert: l.client.Cert, Key: l.client.Key}
	for _, name := range f.names {
		plan.VMs = append(plan.VMs, watchVM{Name: name, Address: f.addrs[name]})
	}
	trialVMs := spread(f.sim.VMs, min(c.trials, n))
	// Through Watch: one VM at a time, every other VM connected.
	heap2 := heap()
	w, err := startWatcher(plan, l.dir)
	if err != nil {
		return r, err
	}
	if r.streamsOpen, err = w.waitOpen(5 * time.Minute); err != nil {
		w.stop()
		return r, err
	}
	r.watchCPU, r.watchRSS = atRest(w, c.atRest)
	r.streamHeapPer100 = (heap() - heap2) * 100 / int64(n)
	r.harnessCPU = harnessCPU(c.atRest)
	for _, vm := range trialVMs {
		seen := w.expectStop(vm.Name)
		t0 := time.Now()
		if _, err := vm.StopSidecar(); err != nil {
			w.stop()
			return r, err
		}
		select {
		case t := <-seen:
			r.stopSeen = append(r.stopSeen, t.Sub(t0))
		case <-time.After(30 * time.Second):
			r.trialMiss++
		}
	}
	w.stop()
	restart(trialVMs)

	// The baseline: GetStatus at the resync period, trials spread over it.
	plan.Mode, plan.PollInterval = "poll", c.poll
	p, err := startWatcher(plan, l.dir)
	if err != nil {
		return r, err
	}
	defer p.stop()
	if _, err := p.waitOpen(c.poll + time.Minute); err != nil {
		return r, err
	}
	r.pollCPU, r.pollRSS = atRest(p, c.atRest)
	pollVMs := spread(f.sim.VMs, min(c.pollTrials, n))
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, vm := range pollVMs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// At a random phase of the VM's polls: spaced evenly, the stops
			// would line up with the polls' own spacing.
			time.Sleep(rand.N(c.poll))
			seen := p.expectStop(vm.Name)
			t0 := time.Now()
			vm.StopSidecar()
			select {
			case t := <-seen:
				mu.Lock()
				r.pollSeen = append(r.pollSeen, t.Sub(t0))
				mu.Unlock()
			case <-time.After(2*c.poll + 30*time.Second):
				mu.Lock()
				r.trialMiss++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	restart(pollVMs)
	r.standInFailures = f.errs.n
	return r, nil
}

// spread picks k VMs whose sidecar runs, spread over the fleet.
func spread(all []*agentsim.VM, k int) []*agentsim.VM {
	var vms []*agentsim.VM
	for _, vm := range all {
		if vm.Sidecar().Active() {
			vms = append(vms, vm)
		}
	}
	k = min(k, len(vms))
	out := make([]*agentsim.VM, 0, k)
	for i := range k {
		out = append(out, vms[i*len(vms)/k])
	}
	return out
}

func restart(vms []*agentsim.VM) {
	for _, vm := range vms {
		vm.StartSidecar()
	}
}

// atRest is the watching process's share of a core and its RSS over d with
// nothing changing.
func atRest(w *watcher, d time.Duration) (float64, int64) {
	time.Sleep(2 * time.Second)
	c0 := w.cpu()
	time.Sleep(d)
	return float64(w.cpu()-c0) / float64(d), w.rss()
}

// harnessCPU is this process's share of a core over d.
func harnessCPU(d time.Duration) float64 {
	c0 := must(measure.CPU(0))
	time.Sleep(d)
	return float64(must(measure.CPU(0))-c0) / float64(d)
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func report(out io.Writer, c config, rows []sizeResult, serialN int, serial onboardResult) {
	fmt.Fprintf(out, "\nfleetbench: simulated VMs (vmagent/agentsim: the real agent and guard over mTLS, one loopback address each, systemd and the app stood in),\n")
	fmt.Fprintf(out, "the lab's kube-apiserver and etcd, istiod's autoregistration stood in (pkg/mesh/autoregsim); %d cores, %s\n\n", runtime.NumCPU(), runtime.Version())
	cols := func(f func(r sizeResult) string) string {
		var b strings.Builder
		for _, r := range rows {
			fmt.Fprintf(&b, "%-22s", f(r))
		}
		return b.String()
	}
	line := func(name, goal string, f func(r sizeResult) string) {
		fmt.Fprintf(out, "%-46s %s %s\n", name, cols(f), goal)
	}
	line("", "goal (issue 23)", func(r sizeResult) string { return fmt.Sprintf("N=%d", r.n) })
	line("agents started", "", func(r sizeResult) string { return r.agentsUp.Round(time.Millisecond).String() })
	line("agent memory per 100 agents, heap / RSS", "(G10: a real agent ≤ 15 MiB RSS)", func(r sizeResult) string {
		return measure.MiB(r.heapPer100) + " / " + measure.MiB(r.rssPer100)
	})
	line("harness RSS, N agents + pilots, onboarded", "", func(r sizeResult) string { return measure.MiB(r.harnessRSS) })
	line("agents' heap per 100 more with a Watch each", "", func(r sizeResult) string { return measure.MiB(r.streamHeapPer100) })
	line("harness CPU, N agents watched, at rest", "", func(r sizeResult) string { return fmt.Sprintf("%.1f %%", 100*r.harnessCPU) })
	fmt.Fprintln(out, "watch: agentwatch holds one stream per agent (a separate process)")
	line("  all streams open", "every stream back ≤ 60 s", func(r sizeResult) string { return r.streamsOpen.Round(time.Millisecond).String() })
	line("  watching process at rest: CPU / RSS", "controller < 10 % core, ≤ 300 MiB", func(r sizeResult) string {
		return fmt.Sprintf("%.1f %% / %s", 100*r.watchCPU, measure.MiB(r.watchRSS))
	})
	line(fmt.Sprintf("  sidecar stopped → seen, p50 / p99 (%d trials)", c.trials), "p99 ≤ 2 s", func(r sizeResult) string {
		return fmt.Sprintf("%s / %s", measure.Percentile(r.stopSeen, 50).Round(time.Millisecond), measure.Percentile(r.stopSeen, 99).Round(time.Millisecond))
	})
	fmt.Fprintf(out, "baseline: GetStatus every %s (-poll; default the controller's resync, 1m), a connection held per agent\n", c.poll)
	line("  polling process at rest: CPU / RSS", "", func(r sizeResult) string {
		return fmt.Sprintf("%.1f %% / %s", 100*r.pollCPU, measure.MiB(r.pollRSS))
	})
	line(fmt.Sprintf("  sidecar stopped → seen, p50 / p99 (%d trials)", c.pollTrials), "", func(r sizeResult) string {
		return fmt.Sprintf("%s / %s", measure.Percentile(r.pollSeen, 50).Round(time.Millisecond), measure.Percentile(r.pollSeen, 99).Round(time.Millisecond))
	})
	line("  ratio of p99, polling / watch", "", func(r sizeResult) string {
		w := measure.Percentile(r.stopSeen, 99)
		if w == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1fx", float64(measure.Percentile(r.pollSeen, 99))/float64(w))
	})
	lists := "a LIST of the namespace's WorkloadEntries per lookup, as vmcore does today"
	if c.entryCache {
		lists = "WorkloadEntries listed from an informer (-entry-cache)"
	}
	fmt.Fprintf(out, "onboarding: vmcore.Reconcile per VM, %d at once, QPS %.0f burst %d, requeued on its WorkloadEntry's changes (no controller yet),\n%s\n", c.workers, c.qps, c.burst, lists)
	line("  all Healthy", "1,000 Ready ≤ 60 s", func(r sizeResult) string {
		if r.onboardErr != nil {
			return fmt.Sprintf("%d/%d in %s", len(r.onboard.PerVM), r.n, c.budget)
		}
		return r.onboard.AllHealthy.Round(time.Millisecond).String()
	})
	line("  passes per second", "", func(r sizeResult) string {
		return fmt.Sprintf("%.1f", float64(r.onboard.Passes)/r.onboard.AllHealthy.Seconds())
	})
	line("  per VM Healthy, p50 / p99 from the start", "", func(r sizeResult) string {
		return fmt.Sprintf("%s / %s", measure.Percentile(r.onboard.PerVM, 50).Round(time.Millisecond), measure.Percentile(r.onboard.PerVM, 99).Round(time.Millisecond))
	})
	line("  passes per VM", "", func(r sizeResult) string { return fmt.Sprintf("%.2f", float64(r.onboard.Passes)/float64(r.n)) })
	line("  API writes per VM (the core's client)", "≤ 4 to onboard", func(r sizeResult) string {
		return fmt.Sprintf("%.2f", float64(measure.Writes(r.coreVerbs))/float64(r.n))
	})
	for _, r := range rows {
		fmt.Fprintf(out, "  N=%d: API requests per VM by verb: the core's %s; istiod stand-in's %s\n", r.n, perVM(r.coreVerbs, r.n), perVM(r.standInVerbs, r.n))
	}
	fmt.Fprintf(out, "baseline: one pass at a time (controller-runtime's default), %d VMs: all Healthy in %s, %.2f passes per VM\n",
		serialN, serial.AllHealthy.Round(time.Millisecond), float64(serial.Passes)/float64(serialN))
	for _, r := range rows {
		if r.trialMiss > 0 || r.standInFailures > 0 || len(r.onboard.Errors) > 0 {
			fmt.Fprintf(out, "N=%d: %d trials unseen within their bound; %d pilot-agent stand-in errors; pass errors: %v\n", r.n, r.trialMiss, r.standInFailures, r.onboard.Errors)
		}
	}
	fmt.Fprintln(out, "\nStand-ins: systemd (agentsim's unit state), the app (a listener per VM), istiod's writes (autoregsim), the sidecar's")
	fmt.Fprintln(out, "binaries (4 KiB files; real delivery is bench-status's figure), istiod's root certificate (published by the bench).")
	fmt.Fprintln(out, "These onboarding rows drive vmcore.Reconcile from the bench's own queue and a DirStore: the baseline of the controller rows below.")
}

func perVM(verbs map[string]int, n int) string {
	keys := slices.Sorted(maps.Keys(verbs))
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %.1f", k, float64(verbs[k])/float64(n)))
	}
	return strings.Join(parts, ", ")
}
