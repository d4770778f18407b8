package fleet

import (
	"context"
	"fmt"

	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
	"github.com/meshvm/meshvm/pkg/mesh/ownership"
	"github.com/meshvm/meshvm/pkg/reason"
)

// Component is one line of a status report; the CLI words the advice on
// its cause after Detail.
type Component struct {
	Name   string `json:"name"`
	State  string `json:"state"`
	Detail string `json:"detail,omitempty"`
	reason.Cause
}

// processes: a cluster of yours (or k3s) runs its own.
func (s *clusterSite) Processes() []Component { return nil }

// ClusterStatus is the site's control-plane processes, then its API server;
// good are the states that are healthy.
func (f *Fleet) ClusterStatus() (out []Component, good []string) {
	s := f.Site
	out = s.Processes()
	api := Component{Name: "API", State: "unreachable", Cause: reason.Because(reason.ClusterStopped)}
	if clients, err := KubeClients(s.Kubeconfig()); err == nil {
		if v, err := clients.Kube.Discovery().ServerVersion(); err == nil {
			api = Component{Name: "API", State: "answering", Detail: fmt.Sprintf("Kubernetes %s; kubeconfig %s", v.GitVersion, s.Kubeconfig())}
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
		out = append(out, Component{Name: "istiod", State: "not ready", Detail: err.Error(), Cause: reason.Because(reason.IstioNotInstalled)})
	} else {
		out = append(out, Component{Name: "istiod", State: "ready", Detail: detail})
	}
	ew := Component{Name: "east-west gateway"}
	if yours := s.JoinedIstio(ctx); yours != "" {
		ew.State, ew.Detail = s.EastWest(ctx)
		out = append(out, Component{Name: "install", State: "yours", Detail: yours + ": the VMs join it; meshvm installs and changes none of it"}, ew)
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
		return nil, nil, reason.Wrap(err, reason.ClusterUnanswered)
	}
	install := Component{Name: "install", State: "installed", Detail: fmt.Sprintf("%d objects rendered: %s", len(objs), istioinstall.Summary(changes))}
	for _, ch := range changes {
		if ch.Action == ownership.Missing {
			install.State, install.Cause = "incomplete", reason.Because(reason.IstioIncomplete)
		}
	}
	ew.State, ew.Detail = s.EastWest(ctx)
	out = append(out, install, ew)
	return out, []string{"ready", "installed", "not run"}, nil
}
