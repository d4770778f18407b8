package vmctl

import (
	"context"
	"time"

	"golang.org/x/time/rate"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
)

// QueueLimits bound the work queue's retries (the zero value takes the
// defaults): passes that failed come back through a bucket of QPS a
// second with Burst at once. New work (a MeshVM created, a stream's event,
// a resync) is not held by it.
type QueueLimits struct {
	QPS   float64
	Burst int
}

// Defaults of the queue's retry bucket: client-go's own (10/s, 100).
const (
	DefaultQueueQPS   = 10
	DefaultQueueBurst = 100
)

// Backoff per VM: a VM that keeps failing (an agent that does not answer)
// is looked at again after 1 s, 2 s, ... up to 5 minutes; the queue's
// retries are held to the bucket.
func rateLimiter(l QueueLimits) workqueue.TypedRateLimiter[reconcile.Request] {
	if l.QPS <= 0 {
		l.QPS = DefaultQueueQPS
	}
	if l.Burst <= 0 {
		l.Burst = DefaultQueueBurst
	}
	return workqueue.NewTypedMaxOfRateLimiter(
		workqueue.NewTypedItemExponentialFailureRateLimiter[reconcile.Request](time.Second, 5*time.Minute),
		&workqueue.TypedBucketRateLimiter[reconcile.Request]{Limiter: rate.NewLimiter(rate.Limit(l.QPS), l.Burst)},
	)
}

// SetupWithManager watches MeshVMs (their spec, annotations and deletion:
// not the status the controller writes) and the WorkloadEntries Istio
// registers for them (an address, a connection, Healthy).
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager, workers int) error {
	registerMetrics(r)
	if err := indexAddresses(context.Background(), mgr); err != nil {
		return err
	}
	if r.Kube.EntriesAt == nil {
		r.Kube.EntriesAt = r.entriesAt
	}
	cached := r.Scope.Namespace != ""
	if cached {
		r.Kube.Kube = cachedKube{Interface: r.Kube.Kube, cache: mgr.GetCache(), scope: r.Scope}
		r.Kube.Istio = cachedIstio{Interface: r.Kube.Istio, cache: mgr.GetCache()}
	}
	deleting := predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool { return !e.ObjectNew.GetDeletionTimestamp().IsZero() }}
	b := ctrl.NewControllerManagedBy(mgr).
		Named("meshvm").
		For(&v1alpha1.MeshVM{}, builder.WithPredicates(predicate.Or(predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}, deleting))).
		Watches(&networkingv1.WorkloadEntry{}, handler.EnqueueRequestsFromMapFunc(r.vmsOfEntry)).
		WithOptions(controller.Options{RateLimiter: rateLimiter(r.Queue), MaxConcurrentReconciles: workers})
	if cached {
		// What the passes read from the cache: a change looks again at
		// the VMs it reaches. Not the cache's first list: at start every
		// VM is looked at anyway. A group or ConfigMap created later is a
		// change (a VM waiting for its WorkloadGroup would otherwise wait
		// for its resync).
		changed := builder.WithPredicates(predicate.Funcs{
			CreateFunc:  func(e event.CreateEvent) bool { return !e.IsInInitialList },
			DeleteFunc:  func(event.DeleteEvent) bool { return true },
			GenericFunc: func(event.GenericEvent) bool { return false },
			UpdateFunc: func(e event.UpdateEvent) bool {
				return e.ObjectOld.GetResourceVersion() != e.ObjectNew.GetResourceVersion()
			}})
		b = b.Watches(&networkingv1.WorkloadGroup{}, handler.EnqueueRequestsFromMapFunc(r.vmsOfGroup), changed).
			Watches(&corev1.ConfigMap{}, handler.EnqueueRequestsFromMapFunc(r.vmsOfConfigMap), changed)
	}
	if r.Streams != nil {
		// The agents' events: a VM-side change enqueues its MeshVM.
		if err := mgr.Add(r.Streams); err != nil {
			return err
		}
		b = b.WatchesRawSource(source.Channel(r.Streams.Events(), &handler.TypedEnqueueRequestForObject[*v1alpha1.MeshVM]{}))
	}
	return b.Complete(r)
}

// vmsOfGroup are the MeshVMs of a WorkloadGroup: its ports, probe and
// service account are in their files.
func (r *Reconciler) vmsOfGroup(ctx context.Context, o client.Object) []reconcile.Request {
	return r.vmsWhere(ctx, nil, client.InNamespace(o.GetNamespace()), client.MatchingFields{vmGroupIndex: o.GetName()})
}

// vmsOfConfigMap are the MeshVMs a cached ConfigMap's change reaches: a
// namespace's root certificate its VMs, a revision's mesh config the VMs
// on that revision, the fleet settings every VM (rare changes, whose
// passes are paced by the queue). Istio's other ConfigMaps reach none.
func (r *Reconciler) vmsOfConfigMap(ctx context.Context, o client.Object) []reconcile.Request {
	ns, name := o.GetNamespace(), o.GetName()
	switch {
	case ns == r.Scope.Namespace:
		if name == fleetstore.SettingsConfigMap {
			return r.vmsWhere(ctx, nil)
		}
	case ns == r.Scope.IstioNamespace:
		return r.vmsWhere(ctx, func(vm *v1alpha1.MeshVM) bool { return workloadfiles.MeshConfigName(vm.Spec.Revision) == name })
	case name == RootCertConfigMap:
		return r.vmsWhere(ctx, nil, client.InNamespace(ns))
	}
	return nil
}

// vmsWhere are the cached MeshVMs listed with opts that keep holds for
// (all when nil).
func (r *Reconciler) vmsWhere(ctx context.Context, keep func(*v1alpha1.MeshVM) bool, opts ...client.ListOption) []reconcile.Request {
	var list v1alpha1.MeshVMList
	if err := r.Client.List(ctx, &list, opts...); err != nil {
		return nil
	}
	var out []reconcile.Request
	for _, vm := range list.Items {
		if keep == nil || keep(&vm) {
			out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&vm)})
		}
	}
	return out
}

// vmsOfEntry are the MeshVMs an entry belongs to: the one its proxy names
// (label meshvm.io/vm, wherever the VM's address went), else those of its
// namespace and autoregistration group at its address (a VM whose files
// predate the label).
func (r *Reconciler) vmsOfEntry(ctx context.Context, o client.Object) []reconcile.Request {
	we, ok := o.(*networkingv1.WorkloadEntry)
	if !ok {
		return nil
	}
	if name := we.Labels[workloadfiles.VMLabel]; name != "" {
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: we.Namespace, Name: name}}}
	}
	group, addr := we.Annotations[annotationGroup], we.Spec.GetAddress()
	if group == "" || addr == "" {
		return nil
	}
	var list v1alpha1.MeshVMList
	if err := r.Client.List(ctx, &list, client.InNamespace(we.Namespace), client.MatchingFields{vmAddressIndex: addr}); err != nil {
		return nil
	}
	var out []reconcile.Request
	for _, vm := range list.Items {
		if vm.Spec.WorkloadGroup == group && (vm.Status.Address == addr || vm.Spec.Address == addr) {
			out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&vm)})
		}
	}
	return out
}
