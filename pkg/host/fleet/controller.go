package fleet

import (
	"context"
	"errors"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshvm/meshvm/pkg/host/progress"
	"github.com/meshvm/meshvm/pkg/mesh/fleetinstall"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
)

// ControllerSteps are fleet install's progress steps.
var ControllerSteps = []progress.Step{progress.Image, progress.Cluster, progress.Controller}

// ControllerOptions are how fleet install runs the controller.
type ControllerOptions struct {
	// Registry is the repository the image is pushed to; empty loads it
	// into the nodes of the k3s hostctl provisioned.
	Registry string
	// Binary is the static controller for a node architecture.
	Binary func(arch string) ([]byte, error)
	// NoWait returns once the objects are applied.
	NoWait bool
}

// ControllerReport is what fleet install did (-o json).
type ControllerReport struct {
	Image   string                `json:"image"`
	Arches  []string              `json:"arches"`
	Loaded  []fleetinstall.Loaded `json:"loaded,omitempty"`
	Pushed  *fleetinstall.Pushed  `json:"pushed,omitempty"`
	Objects []istioinstall.Change `json:"objects"`
	// Summary counts Objects by action.
	Summary   string `json:"summary"`
	Available bool   `json:"available"`
}

// InstallController builds the controller's image, puts it where the
// cluster's nodes find it (the k3s nodes' containerd, or the registry
// named), applies its manifests, and waits for its Deployment.
func (f *Fleet) InstallController(ctx context.Context, p Reporter, o ControllerOptions) (ControllerReport, error) {
	var r ControllerReport
	cs, ok := f.Site.(*clusterSite)
	if !ok {
		return r, errors.New("the lab has no kubelet or containerd to run the controller's pods: fleet install is for a real cluster (k3s on Multipass or SSH machines, or one of yours with --registry)")
	}
	if cs.k3s == nil && o.Registry == "" {
		return r, errors.New("on a cluster of yours hostctl cannot load images into the nodes: give --registry REPOSITORY (e.g. ghcr.io/you/meshvm-controller), which hostctl pushes to and your nodes can pull from")
	}
	bins := map[string][]byte{}
	var missing []error
	for _, arch := range []string{"amd64", "arm64"} {
		b, err := o.Binary(arch)
		if err != nil {
			missing = append(missing, err)
			continue
		}
		bins[arch] = b
	}
	if len(bins) == 0 {
		return r, errors.Join(missing...)
	}
	im, err := fleetinstall.Build(bins)
	if err != nil {
		return r, err
	}
	r.Arches = im.Arches()
	opts := fleetinstall.Options{WorkloadNamespaces: []string{f.Config.Workload.Namespace}}
	if o.Registry != "" {
		pushed, err := fleetinstall.Push(ctx, o.Registry, im)
		if err != nil {
			return r, err
		}
		r.Pushed, opts.Image, opts.PullPolicy = &pushed, pushed.Ref, corev1.PullIfNotPresent
		p.Step(progress.Image, "", "%s %s (linux/%s)", pushed.Ref, pushed.Action, strings.Join(r.Arches, ", linux/"))
	} else {
		k := cs.k3sConfig(p)
		nodes := []string{k.Server.Name}
		for _, a := range k.Agents {
			nodes = append(nodes, a.Name)
		}
		p.Step(progress.Image, "", "%s built for linux/%s; loading it into %s", im.LocalRef(), strings.Join(r.Arches, ", linux/"), strings.Join(nodes, ", "))
		r.Loaded, err = fleetinstall.LoadK3s(ctx, cs.k3s, nodes, im, func(format string, args ...any) { p.Step(progress.Image, "", format, args...) })
		if err != nil {
			return r, err
		}
		opts.Image, opts.PullPolicy = im.LocalRef(), corev1.PullNever
	}
	r.Image = opts.Image
	rc, err := RestConfig(f.Site.Kubeconfig())
	if err != nil {
		return r, err
	}
	if r.Objects, err = fleetinstall.Install(ctx, rc, opts); err != nil {
		return r, err
	}
	r.Summary = istioinstall.Summary(r.Objects)
	p.Step(progress.Cluster, "", "%d objects: %s", len(r.Objects), r.Summary)
	for _, c := range r.Objects {
		if c.Action == istioinstall.Yours {
			p.Step(progress.Cluster, "", "%s: not meshvm's: left as it is", c.Ref)
		}
	}
	if o.NoWait {
		return r, nil
	}
	kc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return r, err
	}
	if err := fleetinstall.WaitAvailable(ctx, kc, fleetinstall.DefaultNamespace, func(s string) { p.Step(progress.Controller, "", "waiting: %s", s) }); err != nil {
		return r, err
	}
	r.Available = true
	p.Step(progress.Controller, "", "Deployment %s/%s available", fleetinstall.DefaultNamespace, fleetinstall.Name)
	return r, nil
}

// ControllerRemoval is what fleet uninstall did (-o json).
type ControllerRemoval struct {
	Objects []istioinstall.Change `json:"objects"`
	Summary string                `json:"summary"`
}

// UninstallController removes what fleet install applied and carries
// meshvm's mark (fleetinstall.Uninstall says what stays and why).
func (f *Fleet) UninstallController(ctx context.Context, force bool) (ControllerRemoval, error) {
	rc, err := RestConfig(f.Site.Kubeconfig())
	if err != nil {
		return ControllerRemoval{}, err
	}
	out, err := fleetinstall.Uninstall(ctx, rc, fleetinstall.Options{WorkloadNamespaces: []string{f.Config.Workload.Namespace}}, force)
	return ControllerRemoval{Objects: out, Summary: istioinstall.Summary(out)}, err
}
