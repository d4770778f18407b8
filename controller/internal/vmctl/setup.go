package vmctl

import (
	"context"
	"time"

	"golang.org/x/time/rate"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
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

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
)

// Backoff per VM: a VM that keeps failing (an agent that does not answer)
// is looked at again after 1 s, 2 s, ... up to 5 minutes; the whole queue
// is held to 10 passes a second.
func rateLimiter() workqueue.TypedRateLimiter[reconcile.Request] {
	return workqueue.NewTypedMaxOfRateLimiter(
		workqueue.NewTypedItemExponentialFailureRateLimiter[reconcile.Request](time.Second, 5*time.Minute),
		&workqueue.TypedBucketRateLimiter[reconcile.Request]{Limiter: rate.NewLimiter(10, 100)},
	)
}

// SetupWithManager watches MeshVMs (their spec, annotations and deletion:
// not the status the controller writes) and the WorkloadEntries Istio
// registers for them (an address, a connection, Healthy).
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager, workers int) error {
	deleting := predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool { return !e.ObjectNew.GetDeletionTimestamp().IsZero() }}
	return ctrl.NewControllerManagedBy(mgr).
		Named("meshvm").
		For(&v1alpha1.MeshVM{}, builder.WithPredicates(predicate.Or(predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}, deleting))).
		Watches(&networkingv1.WorkloadEntry{}, handler.EnqueueRequestsFromMapFunc(r.vmsOfEntry)).
		WithOptions(controller.Options{RateLimiter: rateLimiter(), MaxConcurrentReconciles: workers}).
		Complete(r)
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
	var list v1alpha1.MeshVMList
	if err := r.Client.List(ctx, &list, client.InNamespace(we.Namespace)); err != nil {
		return nil
	}
	group, addr := we.Annotations[annotationGroup], we.Spec.GetAddress()
	var out []reconcile.Request
	for _, vm := range list.Items {
		if vm.Spec.WorkloadGroup == group && (vm.Status.Address == addr || vm.Spec.Address == addr) {
			out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&vm)})
		}
	}
	return out
}
