package fleetmode

import (
	"context"
	"io"

	"k8s.io/client-go/dynamic"

	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/fleet"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
)

// FromFleet is what fleet adopt carries into the fleet's cluster: the
// site's facts become the fleet settings, each VM a MeshVM.
func FromFleet(ctx context.Context, f *fleet.Fleet) (Adoption, error) {
	cfg, site := f.Config, f.Site
	rc, err := fleet.RestConfig(site.Kubeconfig())
	if err != nil {
		return Adoption{}, err
	}
	clients, err := fleet.KubeClients(site.Kubeconfig())
	if err != nil {
		return Adoption{}, err
	}
	dc, err := dynamic.NewForConfig(rc)
	if err != nil {
		return Adoption{}, err
	}
	settings := fleetstore.Settings{ClusterID: site.ClusterID(ctx), IstioNamespace: istioinstall.Namespace, ImageHub: fleet.IstioOptions(cfg).ImageHub(),
		IstiodVersions: map[string]string{}}
	lab := cfg.Cluster.Provider == config.Lab
	if !lab {
		if settings.IstiodAddress, err = site.IstiodAddress(ctx, ""); err != nil {
			return Adoption{}, err
		}
	}
	// The versions of the revisions the VMs are on and new VMs join, on the
	// lab: its istiods are processes the controller cannot ask. What the
	// VMs joined is in the cluster's records once it has some (UseCluster),
	// else this state directory's.
	var store vmcore.Store = vmcore.DirStore{Dir: f.State}
	if f.Records != nil {
		store = f.Records
	}
	revs := []string{site.Revision(ctx)}
	var vms []VM
	for _, vm := range cfg.VMs {
		d := VM{Name: vm.Name, RunsApp: cfg.RunsApp(vm)}
		if lab {
			// A VM not created yet has none (up asks again once it is).
			d.IstiodAddress, _ = site.IstiodAddress(ctx, vm.Name)
		}
		if j, ok, _ := store.Joined(vm.Name); ok {
			revs = append(revs, j.Revision)
		}
		vms = append(vms, d)
	}
	// On a cluster the controller asks istiod's Deployment, which follows
	// an upgrade; a version written here would not.
	for _, rev := range revs {
		if !lab {
			break
		}
		if v, _, err := site.IstiodVersion(ctx, rev); err == nil {
			settings.IstiodVersions[workloadfiles.RevisionName(rev)] = v
		}
	}
	return Adoption{Clients: clients, Dynamic: dc, Namespace: fleetstore.DefaultNamespace, State: f.State, Workload: fleet.WorkloadSpec(cfg),
		VMs: vms, TokenLifetime: cfg.Workload.TokenLifetime.Duration, CertificateLifetime: cfg.Workload.CertificateLifetime.Duration, Settings: settings}, nil
}

// Dynamic is the fleet's cluster's client for MeshVMs.
func Dynamic(f *fleet.Fleet) (dynamic.Interface, error) {
	rc, err := fleet.RestConfig(f.Site.Kubeconfig())
	if err != nil {
		return nil, err
	}
	return dynamic.NewForConfig(rc)
}

// controllerRunner is a site that runs the controller itself: the lab,
// as a local process beside istiod.
type controllerRunner interface {
	StartController(ctx context.Context, progress io.Writer) error
}

// StartController starts the controller where the site runs it (the lab);
// it says whether it did. On a cluster the controller is a Deployment
// (hostctl fleet install).
func StartController(ctx context.Context, f *fleet.Fleet, progress io.Writer) (bool, error) {
	r, ok := f.Site.(controllerRunner)
	if !ok {
		return false, nil
	}
	return true, r.StartController(ctx, progress)
}
