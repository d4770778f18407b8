package vmctl

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
)

// The controller's own metrics, beside controller-runtime's on the same
// endpoint (controller_runtime_reconcile_total and _time_seconds,
// workqueue_*, rest_client_requests_total by method and code, leader
// election). Label values are bounded: condition types and reasons are the
// code's constants, never a VM's name.
var (
	passErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshvm_reconcile_errors_total",
		Help: "Passes over a MeshVM that ended in an error, by the reason of the first condition that held the VM back.",
	}, []string{"reason"})
	rotations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshvm_token_rotations_total",
		Help: "Token rotations at about half a token's life, by result (ok, failed).",
	}, []string{"result"})
	vmConditions = prometheus.NewDesc("meshvm_vms",
		"MeshVMs by condition type and status (True, False, Unknown), from the controller's cache.", []string{"type", "status"}, nil)
	agentStreams = prometheus.NewDesc("meshvm_agent_streams",
		"Agent streams the leader holds open, by kind: stream (watch.v1) or polled (an older agent).", []string{"kind"}, nil)
)

// state is the collector of the gauges, read from the running
// reconciler's cache and streams at each scrape.
type state struct{ r atomic.Pointer[Reconciler] }

var (
	collector    = &state{}
	registerOnce sync.Once
)

// registerMetrics registers the metrics in controller-runtime's registry
// once per process, the gauges read through r.
func registerMetrics(r *Reconciler) {
	registerOnce.Do(func() { metrics.Registry.MustRegister(passErrors, rotations, collector) })
	collector.r.Store(r)
}

func (*state) Describe(ch chan<- *prometheus.Desc) {
	ch <- vmConditions
	ch <- agentStreams
}

func (s *state) Collect(ch chan<- prometheus.Metric) {
	r := s.r.Load()
	if r == nil {
		return
	}
	if r.Streams != nil {
		open, polled := r.Streams.Open()
		ch <- prometheus.MustNewConstMetric(agentStreams, prometheus.GaugeValue, float64(open-polled), "stream")
		ch <- prometheus.MustNewConstMetric(agentStreams, prometheus.GaugeValue, float64(polled), "polled")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var list v1alpha1.MeshVMList
	if err := r.Client.List(ctx, &list); err != nil {
		return
	}
	type key struct{ t, s string }
	counts := map[key]int{}
	for _, vm := range list.Items {
		for _, c := range vm.Status.Conditions {
			counts[key{c.Type, string(c.Status)}]++
		}
	}
	// Every type that is seen at all gets its three statuses, so an alert
	// on False has a zero to compare with.
	types := map[string]bool{}
	for k := range counts {
		types[k.t] = true
	}
	for t := range types {
		for _, st := range []metav1.ConditionStatus{metav1.ConditionTrue, metav1.ConditionFalse, metav1.ConditionUnknown} {
			ch <- prometheus.MustNewConstMetric(vmConditions, prometheus.GaugeValue, float64(counts[key{t, string(st)}]), t, string(st))
		}
	}
}

// held are the conditions a failed pass is counted under, in the core's
// order but the sidecar before the files (a sidecar that does not start
// fails the delivery too, and is the more telling reason): the first that
// is not True names the error's reason.
var held = []string{string(vmcore.Machine), string(vmcore.AgentReachable), v1alpha1.ConditionCredentialsValid, string(vmcore.SidecarRunning),
	string(vmcore.FilesInSync), string(vmcore.Registered), string(vmcore.Healthy), v1alpha1.ConditionUpToDate}

// countError counts a failed pass under the reason its status gives.
func countError(vm *v1alpha1.MeshVM) {
	passErrors.WithLabelValues(errorReason(vm)).Inc()
}

func errorReason(vm *v1alpha1.MeshVM) string {
	for _, t := range held {
		if c := findCondition(vm.Status.Conditions, t); c != nil && c.Status != metav1.ConditionTrue {
			return c.Reason
		}
	}
	if c := findCondition(vm.Status.Conditions, v1alpha1.ConditionReady); c != nil && c.Status != metav1.ConditionTrue {
		return c.Reason
	}
	return "Unknown"
}
