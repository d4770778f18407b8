package fleet

import (
	"context"
	"fmt"

	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
)

// Component is one line of a status report.
type Component struct {
	Name   string `json:"name"`
	State  string `json:"state"`
	Detail string `json:"detail,omitempty"`
}

// processes: a cluster of yours (or k3s) runs its own.
func (s *clusterSite) Processes() []Component { return nil }

// ClusterStatus is the site's control-plane processes, then its API server;
// good are the states that are healthy.
func (f *Fleet) ClusterStatus() (out []Component, good []string) {
	s := f.Site
	out = s.Processes()
	api := Component{"API", "unreachable", "run hostctl cluster up"}
	if clients, err := KubeClients(s.Kubeconfig()); err == nil {
		if v, err := clients.Kube.Discovery().ServerVersion(); err == nil {
			api = Component{"API", "answering", fmt.Sprintf("Kubernetes %s; kubeconfig %s", v.GitVersion, s.Kubeconfig())}
		}
	}
	return append(out, api), []string{"running", "answering"}
}

// IstioStatus is istiod's state, the install's (which rendered objects are
// in the cluster, or the Istio of yours the VMs join) and the east-west
// gateway's; good are the states that are healthy.
func (f *Fleet) IstioStatus(ctx context.Context) (out []Component, good []string, err error) {
	s := f.Site
	if detail, err := s.IstiodReady(ctx, s.Revision(ctx)); err != nil {
		out = append(out, Component{"istiod", "not ready", fmt.Sprintf("%v: run hostctl istio install", err)})
	} else {
		out = append(out, Component{"istiod", "ready", detail})
	}
	ew := Component{Name: "east-west gateway"}
	if yours := s.JoinedIstio(ctx); yours != "" {
		ew.State, ew.Detail = s.EastWest(ctx)
		out = append(out, Component{"install", "yours", yours + ": the VMs join it; meshvm installs and changes none of it"}, ew)
		return out, []string{"ready", "yours", "not run"}, nil
	}
	objs, keep, err := s.Istio()
	if err != nil {
		return nil, nil, err
	}
	rc, err := RestConfig(s.Kubeconfig())
	if err != nil {
		return nil, nil, err
	}
	changes, err := istioinstall.Check(ctx, rc, objs, keep)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: is the cluster up? (hostctl cluster status)", err)
	}
	st := "installed"
	for _, ch := range changes {
		if ch.Action == "missing" {
			st = "incomplete: run hostctl istio install"
		}
	}
	ew.State, ew.Detail = s.EastWest(ctx)
	out = append(out, Component{"install", st, fmt.Sprintf("%d objects rendered: %s", len(objs), istioinstall.Summary(changes))}, ew)
	return out, []string{"ready", "installed", "not run"}, nil
}
