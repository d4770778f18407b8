package vmctl

import (
	"context"
	"slices"

	clientnetworking "istio.io/client-go/pkg/apis/networking/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
)

// Indexes of the controller's cache, so that a lookup reads the objects at
// one address rather than a namespace's every object: at a thousand VMs a
// pass and a WorkloadEntry's event stay constant work, not linear.
const (
	entryAddressIndex = "spec.address"
	vmAddressIndex    = "meshvm.address"
	vmGroupIndex      = "spec.workloadGroup"
)

func indexAddresses(ctx context.Context, mgr ctrl.Manager) error {
	idx := mgr.GetFieldIndexer()
	if err := idx.IndexField(ctx, &clientnetworking.WorkloadEntry{}, entryAddressIndex, func(o client.Object) []string {
		if a := o.(*clientnetworking.WorkloadEntry).Spec.GetAddress(); a != "" {
			return []string{a}
		}
		return nil
	}); err != nil {
		return err
	}
	if err := idx.IndexField(ctx, &v1alpha1.MeshVM{}, vmGroupIndex, func(o client.Object) []string {
		return []string{o.(*v1alpha1.MeshVM).Spec.WorkloadGroup}
	}); err != nil {
		return err
	}
	// A MeshVM is at its spec's address and where it was last reached.
	return idx.IndexField(ctx, &v1alpha1.MeshVM{}, vmAddressIndex, func(o client.Object) []string {
		vm := o.(*v1alpha1.MeshVM)
		var out []string
		for _, a := range []string{vm.Spec.Address, vm.Status.Address} {
			if a != "" && !slices.Contains(out, a) {
				out = append(out, a)
			}
		}
		return out
	})
}

// entriesAt are the cached WorkloadEntries of namespace at address
// (workload.Clients.EntriesAt).
func (r *Reconciler) entriesAt(ctx context.Context, namespace, address string) ([]*clientnetworking.WorkloadEntry, error) {
	var list clientnetworking.WorkloadEntryList
	if err := r.Client.List(ctx, &list, client.InNamespace(namespace), client.MatchingFields{entryAddressIndex: address}); err != nil {
		return nil, err
	}
	return list.Items, nil
}
