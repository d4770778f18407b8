package fleetmode

import (
	"context"
	"fmt"
	"maps"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/fleet"
	"github.com/meshvm/meshvm/pkg/host/progress"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/mesh/ownership"
)

// Up is hostctl up in fleet mode. The workstation converges the site and
// each VM's machine, app and agent (only it can); then the cluster's store
// (the agent CA, the settings; a VM this state directory onboarded before
// is adopted, its records carried over once), the controller running
// (controller: the lab's process, or the Deployment), and a MeshVM per VM
// declared; then it waits for each MeshVM's Ready, which the controller
// sets from the same per-VM core: up and the controller cannot disagree
// on what converged means.
func Up(ctx context.Context, f *fleet.Fleet, p fleet.Reporter, controller func(context.Context) error) error {
	begun := time.Now()
	// The revisions the VMs joined, for the WorkloadGroup's istio.io/rev,
	// are the cluster's records once it has an agent CA; before (the first
	// up), the state directory's.
	if err := UseCluster(ctx, f); err != nil {
		f.Records = nil
	}
	var a Adoption
	say := func(ch Change) { p.Step(progress.Controller, "", "%s %s", ch.Object, ch.Action) }
	vms, err := f.Provision(ctx, p, func(ctx context.Context) (vmcore.Store, error) {
		var err error
		if a, err = FromFleet(ctx, f); err != nil {
			return nil, err
		}
		changes, err := ensureStore(ctx, a)
		for _, ch := range changes {
			say(ch)
		}
		if err != nil {
			return nil, err
		}
		return fleetstore.New(ctx, a.Clients.Kube, a.Namespace, a.Workload.Namespace, fleetstore.WithClient(f.State.ClientCert)), nil
	})
	if err != nil {
		return err
	}
	if err := controller(ctx); err != nil {
		return err
	}
	store := fleetstore.New(ctx, a.Clients.Kube, a.Namespace, a.Workload.Namespace)
	var names []string
	for i, vm := range vms {
		if a.VMs[i].IstiodAddress == "" && f.Config.Cluster.Provider == config.Lab {
			if a.VMs[i].IstiodAddress, err = f.Site.IstiodAddress(ctx, vm.Name); err != nil {
				return fmt.Errorf("%s: %w", vm.Name, err)
			}
		}
		revision, err := declaredRevision(store, vm.Name, f.Site.Revision(ctx))
		if err != nil {
			return fmt.Errorf("%s: %w", vm.Name, err)
		}
		pinned := pinnedAddress(f.Config.MachineProvider(), vm.Address)
		action, err := a.apply(ctx, a.VMs[i], pinned, revision)
		if err != nil {
			return fmt.Errorf("%s: %w", vm.Name, err)
		}
		// An unpinned VM is found where its record says: where this
		// workstation just reached its agent (the provider's address,
		// a move the controller followed included). After the revision
		// is declared: a record with an address and no join reads as a
		// VM onboarded before meshvm kept revisions.
		if pinned == "" && action != ownership.Yours {
			if err := store.SetAddress(vm.Name, vm.Address); err != nil {
				return fmt.Errorf("%s: %w", vm.Name, err)
			}
		}
		say(Change{Object: "MeshVM " + a.Workload.Namespace + "/" + vm.Name, Action: action})
		if action == ownership.Yours {
			continue
		}
		names = append(names, vm.Name)
	}
	err = WaitReady(ctx, a.Dynamic, a.Workload.Namespace, names, func(vm, format string, args ...any) { p.Step(progress.Controller, vm, format, args...) })
	if err != nil {
		return err
	}
	p.Say("%d VM(s) declared and Ready in %s; the controller keeps them in the mesh (kubectl get meshvms -n %s).", len(names), time.Since(begun).Round(time.Second), a.Workload.Namespace)
	return nil
}

// ensureStore is the cluster's side of fleet mode (ensureBase), and the
// records of each VM this state directory onboarded that the cluster does
// not know yet (adopted once: later the controller's are newer).
func ensureStore(ctx context.Context, a Adoption) ([]Change, error) {
	var out []Change
	// A workstation without an agent CA takes the cluster's, which the
	// agents pin: a second person manages the same VMs.
	if sec, err := a.Clients.Kube.CoreV1().Secrets(a.Namespace).Get(ctx, fleetstore.CASecret, metav1.GetOptions{}); err == nil {
		taken, err := a.State.TakeCA(sec.Data[corev1.TLSCertKey], sec.Data[corev1.TLSPrivateKeyKey])
		if err != nil {
			return out, fmt.Errorf("the agent CA in Secret %s/%s: %w", a.Namespace, fleetstore.CASecret, err)
		}
		if taken {
			out = append(out, Change{Object: "agent CA (Secret " + a.Namespace + "/" + fleetstore.CASecret + ") into " + a.State.Path("agent-ca"), Action: ownership.Created})
		}
	} else if !apierrors.IsNotFound(err) {
		return out, err
	}
	base, err := a.ensureBase(ctx)
	if out = append(out, base...); err != nil {
		return out, err
	}
	var action ownership.Action
	add := func(obj string, action ownership.Action) { out = append(out, Change{Object: obj, Action: action}) }
	store := fleetstore.New(ctx, a.Clients.Kube, a.Namespace, a.Workload.Namespace)
	dir := vmcore.DirStore{Dir: a.State}
	for _, vm := range a.VMs {
		known, err := store.Known(vm.Name)
		if err != nil || known {
			if err != nil {
				return out, err
			}
			continue
		}
		rec, err := records(dir, a.State, vm.Name)
		if err != nil {
			return out, fmt.Errorf("%s: %w", vm.Name, err)
		}
		if rec.Address == "" {
			continue // never onboarded from here: the controller onboards it
		}
		if action, err = store.Put(vm.Name, rec); err != nil {
			return out, err
		}
		add("Secret "+a.Namespace+"/"+fleetstore.RecordName(a.Workload.Namespace, vm.Name)+" (adopted from the state directory)", action)
	}
	return out, nil
}

// declaredRevision is the revision a VM's MeshVM names: the one it joined
// (vm upgrade moves it), else the site's for a new VM; "" is the default.
func declaredRevision(store *fleetstore.Store, vm, siteRev string) (string, error) {
	rev, err := vmcore.VMRevision(store, vm, siteRev)
	if rev == "default" {
		rev = ""
	}
	return rev, err
}

// apply declares VM vm's MeshVM at addr: created when missing, its spec
// brought to the config's when it is meshvm's, left alone when it is not
// (ownership.Yours). spec.paused is not declared here: vm revoke and vm
// onboard set it.
func (a Adoption) apply(ctx context.Context, vm VM, addr, revision string) (ownership.Action, error) {
	m := MeshVM(vm, a.Workload, addr, revision, a.TokenLifetime, a.CertificateLifetime)
	api := a.Dynamic.Resource(MeshVMs).Namespace(m.Namespace)
	before, err := api.Get(ctx, m.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		before = nil
	case err != nil:
		return "", err
	case !ownership.Owned(before):
		return ownership.Yours, nil
	default:
		// A VM moved on by vm upgrade (or kubectl) keeps its revision; one
		// whose address someone unpinned stays followed by the controller.
		if rev, _, _ := unstructured.NestedString(before.Object, "spec", "revision"); rev != "" {
			m.Spec.Revision = rev
		}
		if a, _, _ := unstructured.NestedString(before.Object, "spec", "address"); a == "" {
			m.Spec.Address = ""
		}
	}
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(m)
	if err != nil {
		return "", err
	}
	delete(obj, "status") // the controller's
	after, err := api.Apply(ctx, m.Name, &unstructured.Unstructured{Object: obj}, metav1.ApplyOptions{FieldManager: ownership.FieldManager, Force: true})
	if err != nil {
		return "", err
	}
	switch {
	case before == nil:
		return ownership.Created, nil
	case before.GetGeneration() != after.GetGeneration() || !maps.Equal(before.GetLabels(), after.GetLabels()) || !maps.Equal(before.GetAnnotations(), after.GetAnnotations()):
		return ownership.Configured, nil
	}
	return ownership.Unchanged, nil
}

// pinnedAddress is the spec.address up declares for a VM at addr. A
// machine whose address its provider hands out (a Multipass or lab VM,
// a lease that can change) is left unpinned: the controller reaches it
// where it was recorded and follows it when it moves. An SSH host's
// address is the user's (it may be a NAT'd one the VM does not have), so
// it is pinned.
func pinnedAddress(machines config.Provider, addr string) string {
	if machines == config.SSH {
		return addr
	}
	return ""
}
