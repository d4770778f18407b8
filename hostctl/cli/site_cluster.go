package cli

import (
	"context"
	"fmt"
	"strings"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshvm/meshvm/hostctl/config"
	"github.com/meshvm/meshvm/pkg/istioinstall"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/onboard"
	"github.com/meshvm/meshvm/pkg/proxyimage"
	"github.com/meshvm/meshvm/pkg/statedir"
	"github.com/meshvm/meshvm/pkg/workload"
)

// clusterSite is a real Kubernetes cluster, reached through a kubeconfig:
// Istio is installed in full, VMs reach istiod through the east-west
// gateway's LoadBalancer address, and the sidecar comes out of the
// istio/proxyv2 image of istiod's version for each VM's architecture.
type clusterSite struct {
	cfg   config.Config
	state *statedir.Dir
	ms    machine.Provider
	kc    string
	// addr is the east-west gateway's address, once known.
	addr string
}

func (s *clusterSite) machines() machine.Provider { return s.ms }

func (s *clusterSite) kubeconfig() string { return s.kc }

func (s *clusterSite) clients() (workload.Clients, error) { return kubeClients(s.kc) }

func (s *clusterSite) upCluster(ctx context.Context, p *progress) error {
	c, err := s.clients()
	if err != nil {
		return err
	}
	v, err := c.Kube.Discovery().ServerVersion()
	if err != nil {
		return fmt.Errorf("cluster.kubeconfig %s: the API server does not answer (%w): check the file and that the cluster runs", s.kc, err)
	}
	p.step("control plane", "", "existing cluster, Kubernetes %s (kubeconfig %s)", v.GitVersion, s.kc)
	return nil
}

func (s *clusterSite) options() istioinstall.Options {
	o := istioOptions(s.cfg)
	o.Hub = s.cfg.Istio.Hub
	return o
}

func (s *clusterSite) installIstio(ctx context.Context, p *progress) error {
	objs, keep, err := s.istio()
	if err != nil {
		return err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", s.kc)
	if err != nil {
		return fmt.Errorf("kubeconfig %s: %w", s.kc, err)
	}
	changes, err := istioinstall.Apply(ctx, rc, objs, keep)
	if err != nil {
		return err
	}
	p.step("control plane", "", "Istio %s: %d objects rendered from the embedded charts: %s", istioinstall.EmbeddedVersion, len(objs), istioinstall.Summary(changes))
	c, err := s.clients()
	if err != nil {
		return err
	}
	s.addr, err = istioinstall.WaitReady(ctx, c.Kube, func(msg string) { p.step("control plane", "", "%s", msg) })
	if err != nil {
		return err
	}
	p.step("control plane", "", "istiod ready; VMs reach it through the east-west gateway at %s", s.addr)
	return nil
}

func (s *clusterSite) istio() ([]istioinstall.Object, istioinstall.Keep, error) {
	objs, err := istioinstall.Render(s.options())
	return objs, istioinstall.Everything, err
}

func (s *clusterSite) eastWest(ctx context.Context) (string, string) {
	c, err := s.clients()
	if err != nil {
		return "unknown", err.Error()
	}
	addr, err := istioinstall.EastWestAddress(ctx, c.Kube)
	switch {
	case err != nil:
		return "missing", err.Error()
	case addr == "":
		if held, _ := istioinstall.PortConflicts(ctx, c.Kube); len(held) > 0 {
			return "pending", strings.Join(held, "; ") + ": " + istioinstall.PortConflictFix
		}
		return "pending", "no LoadBalancer address yet: does the cluster have a load balancer (k3s: klipper)?"
	}
	return "ready", "VMs reach istiod at " + addr
}

func (s *clusterSite) istiodReady(ctx context.Context) (string, error) {
	c, err := s.clients()
	if err != nil {
		return "", err
	}
	return istioinstall.IstiodReady(ctx, c.Kube)
}

func (s *clusterSite) istiodAddress(ctx context.Context, _ string) (string, error) {
	if s.addr != "" {
		return s.addr, nil
	}
	c, err := s.clients()
	if err != nil {
		return "", err
	}
	addr, err := istioinstall.EastWestAddress(ctx, c.Kube)
	if err != nil {
		return "", err
	}
	if addr == "" {
		return "", fmt.Errorf("the east-west gateway has no LoadBalancer address yet: run hostctl up (it waits for it and names what holds it up)")
	}
	s.addr = addr
	return addr, nil
}

func (s *clusterSite) sidecar(ctx context.Context, arch string) (onboard.Sidecar, error) {
	hub := s.cfg.Istio.Hub
	if hub == "" {
		hub = istioinstall.DefaultHub
	}
	f := proxyimage.Fetcher{CacheDir: s.state.Path("sidecar")}
	side, err := f.Fetch(ctx, proxyimage.Image(hub, istioinstall.EmbeddedVersion), arch)
	if err != nil {
		return onboard.Sidecar{}, err
	}
	return onboard.Sidecar{PilotAgent: side.Path("pilot-agent"), Envoy: side.Path("envoy"), BootstrapTemplate: side.Path("envoy_bootstrap_tmpl.json")}, nil
}

func (s *clusterSite) prepareVM(context.Context, string) error { return nil }

// downCluster uninstalls what up installed: the workload's namespace and
// Istio (its CRDs stay). The cluster itself is not ours to delete.
func (s *clusterSite) downCluster(ctx context.Context, p *progress, _ bool) error {
	c, err := s.clients()
	if err != nil {
		return err
	}
	gone, err := workload.Remove(ctx, c, workloadSpec(s.cfg))
	if err != nil {
		return err
	}
	p.step("cluster", "", "workload namespace %s %s", s.cfg.Workload.Namespace, gone)
	objs, keep, err := s.istio()
	if err != nil {
		return err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", s.kc)
	if err != nil {
		return err
	}
	changes, err := istioinstall.Uninstall(ctx, rc, objs, keep)
	if err != nil {
		return err
	}
	p.step("cluster", "", "Istio uninstalled: %s; the cluster itself is yours and stays", istioinstall.Summary(changes))
	return nil
}

func (s *clusterSite) trafficUncheckable() string {
	return "traffic checks on a real cluster are not built yet (they need a client pod in the mesh)"
}
