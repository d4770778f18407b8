// Command controller is fleet mode's controller: it keeps every MeshVM's
// VM in the mesh with the per-VM core hostctl drives (pkg/host/vmcore),
// calling the VMs' agents with its own client identity. It never creates
// machines or installs agents: hostctl does, from a workstation.
//
// It runs in a cluster (a Deployment that hostctl fleet install renders)
// or, in the lab, as a local process beside istiod (--kubeconfig).
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/util/flowcontrol"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/client/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/controller/internal/vmctl"
	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/host/agentwatch"
	"github.com/meshvm/meshvm/pkg/host/formcache"
	"github.com/meshvm/meshvm/pkg/mesh/proxyimage"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "controller:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		namespace    = flag.String("namespace", fleetstore.DefaultNamespace, "namespace of the controller's Secrets (agent CA, client identity, VM records), fleet settings and leader lease")
		leaderElect  = flag.Bool("leader-elect", true, "elect one leader among the controller's replicas: only it acts")
		metricsAddr  = flag.String("metrics-bind-address", ":8080", "address of the Prometheus metrics endpoint (0 turns it off)")
		probeAddr    = flag.String("health-probe-bind-address", ":8081", "address of the healthz and readyz endpoints")
		pprofAddr    = flag.String("pprof-bind-address", "", "address of Go's /debug/pprof endpoints, for a heap or CPU profile (default off: they show the process's internals)")
		sidecarDir   = flag.String("sidecar-dir", "", "directory with the sidecar's files as VERSION/ARCH/{pilot-agent,envoy,envoy_bootstrap_tmpl.json} (default: pulled from the fleet settings' imageHub)")
		cacheDir     = flag.String("cache-dir", filepath.Join(os.TempDir(), "meshvm-controller"), "where pulled sidecar images and compressed forms are kept")
		resync       = flag.Duration("resync", vmctl.DefaultResync, "periodic look at each VM, which repairs what no event shows (a file changed on the VM); the agents' streams bring every other VM-side change (jittered ±10%)")
		releaseAfter = flag.Duration("release-after", vmctl.DefaultReleaseAfter, "how long a deleted MeshVM waits for its agent before it is released")
		workers      = flag.Int("workers", 4, "VMs reconciled at once")
		qps          = flag.Float64("kube-api-qps", 50, "API requests per second (client-side limit)")
		burst        = flag.Int("kube-api-burst", 100, "API request burst")
		queueQPS     = flag.Float64("queue-qps", vmctl.DefaultQueueQPS, "failed passes retried per second over all VMs (the work queue's bucket; each VM also backs off 1s..5m)")
		queueBurst   = flag.Int("queue-burst", vmctl.DefaultQueueBurst, "failed passes retried at once (the work queue's bucket)")
		dials        = flag.Float64("agent-dials-per-second", 50, "new agent streams opened per second over all VMs: after a failover 1,000 streams come back over 20 s, not at once")
		istioNS      = flag.String("istio-namespace", "istio-system", "istiod's namespace: its ConfigMaps (the mesh config) are watched and read from the cache")
		workloadNS   = flag.String("workload-namespaces", "", "comma-separated namespaces of the MeshVMs, whose istio-ca-root-cert ConfigMap is watched (default: that ConfigMap in every namespace)")
		pollEvery    = flag.Duration("agent-poll-interval", 30*time.Second, "how often an agent without the watch stream (an older release) is asked for its status")
	)
	// Leader election's timing (controller-runtime's defaults): how long a
	// dead leader holds the Lease before another replica takes it.
	var (
		leaseDuration = flag.Duration("leader-elect-lease-duration", 15*time.Second, "how long a replica waits, after the leader's last renewal, before it takes the Lease")
		renewDeadline = flag.Duration("leader-elect-renew-deadline", 10*time.Second, "how long the leader keeps trying to renew before it gives up leading (less than the lease duration)")
		retryPeriod   = flag.Duration("leader-elect-retry-period", 2*time.Second, "how often replicas try to take or renew the Lease")
	)
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))
	if *retryPeriod <= 0 || *renewDeadline <= *retryPeriod || *leaseDuration <= *renewDeadline {
		return fmt.Errorf("leader election: want 0 < --leader-elect-retry-period (%s) < --leader-elect-renew-deadline (%s) < --leader-elect-lease-duration (%s)", *retryPeriod, *renewDeadline, *leaseDuration)
	}

	// --kubeconfig is controller-runtime's flag: in-cluster without it.
	rc, err := ctrlconfig.GetConfig()
	if err != nil {
		return fmt.Errorf("kubeconfig: %w (give --kubeconfig outside a cluster)", err)
	}
	rc.QPS, rc.Burst = float32(*qps), *burst
	// One bucket for every client made from rc (the manager's, the core's
	// Kubernetes and Istio clientsets, Events): --kube-api-qps is the
	// process's rate, not each client's.
	rc.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(rc.QPS, rc.Burst)
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, v1alpha1.AddToScheme, networkingv1.AddToScheme} {
		if err := add(scheme); err != nil {
			return err
		}
	}
	scope := vmctl.Scope{Namespace: *namespace, IstioNamespace: *istioNS}
	if *workloadNS != "" {
		scope.WorkloadNamespaces = strings.Split(*workloadNS, ",")
	}
	mgr, err := ctrl.NewManager(rc, ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 metricsserver.Options{BindAddress: *metricsAddr},
		HealthProbeBindAddress:  *probeAddr,
		PprofBindAddress:        *pprofAddr,
		LeaderElection:          *leaderElect,
		LeaderElectionID:        v1alpha1.ControllerLease,
		LeaderElectionNamespace: *namespace,
		LeaseDuration:           leaseDuration,
		RenewDeadline:           renewDeadline,
		RetryPeriod:             retryPeriod,
		// A replica stopped (SIGTERM) hands the Lease over at once.
		LeaderElectionReleaseOnCancel: true,
		// What is watched, each kind scoped (Secrets only the store's,
		// never cluster-wide): Scope.CacheOptions.
		Cache:  scope.CacheOptions(),
		Client: client.Options{Cache: &client.CacheOptions{Unstructured: false}},
	})
	if err != nil {
		return err
	}
	kc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	ic, err := istioclient.NewForConfig(rc)
	if err != nil {
		return err
	}
	r := &vmctl.Reconciler{
		Client:       mgr.GetClient(),
		Kube:         workload.Clients{Kube: kc, Istio: ic},
		Namespace:    *namespace,
		Events:       mgr.GetEventRecorder("meshvm-controller"),
		Sidecars:     &vmctl.Sidecars{Dir: *sidecarDir, Fetcher: &proxyimage.Fetcher{CacheDir: filepath.Join(*cacheDir, "sidecar")}},
		Forms:        formcache.New(filepath.Join(*cacheDir, "forms")),
		Resync:       *resync,
		ReleaseAfter: *releaseAfter,
		Streams:      vmctl.NewStreams(agentwatch.Options{DialsPerSecond: *dials, PollInterval: *pollEvery}),
		Queue:        vmctl.QueueLimits{QPS: *queueQPS, Burst: *queueBurst},
		Scope:        scope,
	}
	if err := r.SetupWithManager(mgr, *workers); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return err
	}
	ctx := ctrl.SetupSignalHandler()
	start := time.Now()
	ctrl.Log.Info("starting", "namespace", *namespace, "leaderElect", *leaderElect, "resync", resync.String())
	err = mgr.Start(ctx)
	ctrl.Log.Info("stopped", "after", time.Since(start).String())
	return err
}
