package vmctl

import (
	"context"
	"time"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
)

// Events of address following.
const (
	ReasonAddressFollowed    = "AddressFollowed"
	ReasonAddressNotFollowed = "AddressNotFollowed"
)

// Annotations istiod writes on the entries it autoregisters.
const (
	annotationGroup       = "istio.io/autoRegistrationGroup"
	annotationConnectedAt = "istio.io/connectedAt"
)

// follow is where the VM is now, given addr where it was last onboarded.
// A VM that moved (a new lease, a new network) restarts its proxy at its
// new address, and istiod registers it there under the VM's name (the
// proxy's meshvm.io/vm label): the controller follows that entry once the
// VM's agent proves to be there, over a certificate of the agent CA naming
// the VM, and no longer answers as the VM at addr. Anyone allowed to write
// WorkloadEntries could write one, so the entry alone moves nothing. The
// core, run at the new address, then repairs the files and hosts block,
// deletes the entry left at the old one and records the new one.
func (r *Reconciler) follow(ctx context.Context, vm *v1alpha1.MeshVM, addr string, store *fleetstore.Store) (string, error) {
	entry, seen, err := r.seenAt(ctx, vm)
	if err != nil || seen == "" || seen == addr {
		return addr, err
	}
	if seen == vm.Status.Address {
		// Followed already; the record changes once the VM is in at seen.
		// The core dials seen as the VM, so no other agent is taken for it.
		return seen, nil
	}
	if addr != "" {
		if _, err := vmcore.ProveAgent(ctx, vm.Name, addr, store); err == nil {
			r.event(vm, "Warning", ReasonAddressNotFollowed, "FollowAddress",
				"WorkloadEntry %s shows the VM at %s, but its agent still answers at %s: staying there", entry, seen, addr)
			return addr, nil
		}
	}
	v, err := vmcore.ProveAgent(ctx, vm.Name, seen, store)
	if err != nil {
		r.event(vm, "Warning", ReasonAddressNotFollowed, "FollowAddress",
			"WorkloadEntry %s shows the VM at %s, but no agent there proves to be %s's (%v): staying at %s", entry, seen, vm.Name, err, addr)
		return addr, nil
	}
	r.event(vm, "Normal", ReasonAddressFollowed, "FollowAddress",
		"moved from %s to %s: WorkloadEntry %s registered it there and its agent (%s) proved to be %s's; repairing the VM there",
		wasAt(addr), seen, entry, v.GetVersion(), vm.Name)
	return seen, nil
}

// wasAt names where the VM was, when it was anywhere.
func wasAt(addr string) string {
	if addr == "" {
		return "no address"
	}
	return addr
}

// seenAt is the VM's newest connected autoregistered entry of its group,
// found by the VM's label in the controller's cache, and its address.
func (r *Reconciler) seenAt(ctx context.Context, vm *v1alpha1.MeshVM) (name, addr string, err error) {
	var list networkingv1.WorkloadEntryList
	if err := r.Client.List(ctx, &list, client.InNamespace(vm.Namespace), client.MatchingLabels{workloadfiles.VMLabel: vm.Name}); err != nil {
		return "", "", err
	}
	var newest time.Time
	for _, we := range list.Items {
		at, err := time.Parse(time.RFC3339Nano, we.Annotations[annotationConnectedAt])
		if err != nil || we.Annotations[annotationGroup] != vm.Spec.WorkloadGroup || we.Spec.GetAddress() == "" || at.Before(newest) {
			continue
		}
		name, addr, newest = we.Name, we.Spec.GetAddress(), at
	}
	return name, addr, nil
}

// certificateTimes shows the workload certificate's end, as the agent read
// it, in the status.
func certificateTimes(st *v1alpha1.MeshVMStatus, cs vmcore.Status) {
	if cs.CertNotAfter.IsZero() {
		return
	}
	t := metav1.NewTime(cs.CertNotAfter.Truncate(time.Second))
	st.CertificateNotAfter = &t
}
