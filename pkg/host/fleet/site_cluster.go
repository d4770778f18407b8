package fleet

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/onboard"
	"github.com/meshvm/meshvm/pkg/host/statedir"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
	"github.com/meshvm/meshvm/pkg/mesh/k3s"
	"github.com/meshvm/meshvm/pkg/mesh/ownership"
	"github.com/meshvm/meshvm/pkg/mesh/proxyimage"
	"github.com/meshvm/meshvm/pkg/mesh/traffic"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
	"github.com/meshvm/meshvm/pkg/reason"
)

// clusterSite is a real Kubernetes cluster, reached through a kubeconfig:
// one of yours, or k3s that up provisions on Multipass machines. Istio is
// installed in full, VMs reach istiod through the east-west
// gateway's LoadBalancer address, and the sidecar comes out of the
// istio/proxyv2 image of istiod's version for each VM's architecture.
type clusterSite struct {
	cfg   config.Config
	state *statedir.Dir
	ms    machine.Provider
	kc    string
	// k3s provisions the cluster on its machines; nil for a cluster of yours.
	k3s machine.Provider
	// addr is the east-west gateway's address, once known.
	addr string
	kube workload.Clients
	// mu guards addr and kube: VMs onboard concurrently.
	mu sync.Mutex
	// version is the Istio meshvm installs (the embedded one unless
	// istio.version names another, then rendered with istioctl of that
	// version). The VMs' proxy is their running istiod's (IstiodVersion).
	version, istioctl string
	// joined is the Istio of yours the VMs join (nil: meshvm's own), and
	// joinErr why they cannot; looked up once (inspected). Guarded by mu.
	joined    *istioinstall.ControlPlane
	joinErr   error
	inspected bool
}

// joinedPlane is the Istio of yours the VMs join, nil when the cluster has
// none (meshvm's own does not count). With istio.install always, or when
// VMs cannot join it as it is, the error says what is in the way.
func (s *clusterSite) joinedPlane(ctx context.Context) (*istioinstall.ControlPlane, error) {
	c, err := s.clients()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.inspected {
		defer s.mu.Unlock()
		return s.joined, s.joinErr
	}
	s.mu.Unlock()
	f, err := istioinstall.InspectForeign(ctx, c.Kube)
	if err != nil {
		return nil, err
	}
	var joined *istioinstall.ControlPlane
	var joinErr error
	switch {
	case !f.Found():
	case s.cfg.Istio.Install == config.InstallAlways:
		joinErr = f.Error()
	default:
		cp, err := f.Joinable(s.cfg.Istio.IstiodAddress != "", s.cfg.Istio.Revision)
		switch {
		case err != nil:
			joinErr = err
		case cp.Gateway == "" && cp.Network != s.cfg.Workload.Network:
			// Without a gateway VMs and pods must share one network.
			joinErr = fmt.Errorf("%s has no east-west gateway, so the VMs join it on its network, which is %q: set workload.network to %q "+
				"(for a network of the VMs' own, the mesh needs an east-west gateway)", cp, cp.Network, cp.Network)
		default:
			joined = &cp
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.joined, s.joinErr, s.inspected = joined, joinErr, true
	return joined, joinErr
}

func (s *clusterSite) JoinedIstio(ctx context.Context) string {
	if cp, _ := s.joinedPlane(ctx); cp != nil {
		return cp.String()
	}
	return ""
}

// clusterID is the cluster's name in the mesh: istiod's, when the VMs join
// an Istio of yours (Istio's default is Kubernetes).
func (s *clusterSite) ClusterID(ctx context.Context) string {
	if cp, _ := s.joinedPlane(ctx); cp != nil {
		if cp.ClusterID == "" {
			return "Kubernetes"
		}
		return cp.ClusterID
	}
	return s.cfg.Istio.ClusterName
}

// istiodRoute is how the VMs reach istiod: through the gateway Service
// (namespace/name), or, in a single-network mesh of yours without one,
// directly at direct (istio.istiodAddress). cp is the Istio joined, nil for
// meshvm's own.
func (s *clusterSite) istiodRoute(cp *istioinstall.ControlPlane) (gateway, direct string) {
	switch {
	case cp == nil && s.cfg.Istio.IstiodAddress != "":
		return "", s.cfg.Istio.IstiodAddress // meshvm's Istio on one network
	case cp == nil:
		return istioinstall.Namespace + "/" + istioinstall.EastWestGateway, ""
	case cp.Gateway == "":
		return "", s.cfg.Istio.IstiodAddress
	}
	return cp.Gateway, ""
}

func (s *clusterSite) Machines() machine.Provider { return s.ms }

func (s *clusterSite) Kubeconfig() string { return s.kc }

// clients connects once (the kubeconfig of a k3s cluster appears only
// when upCluster has written it).
func (s *clusterSite) clients() (workload.Clients, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.kube.Kube != nil {
		return s.kube, nil
	}
	c, err := KubeClients(s.kc)
	if err == nil {
		s.kube = c
	}
	return c, err
}

// k3sConfig is the recipe's cluster: one server, agents, the configured size.
func (s *clusterSite) k3sConfig(p Reporter) k3s.Config {
	cl := s.cfg.Cluster
	spec := func(name string) machine.Spec {
		return machine.Spec{Name: name, CPUs: cl.Machine.CPUs, Memory: cl.Machine.Memory, Disk: cl.Machine.Disk}
	}
	c := k3s.Config{Provider: s.k3s, Version: cl.K3sVersion, Server: spec("k3s-server"),
		Progress: func(f string, a ...any) { p.Step("control plane", "", f, a...) }}
	if len(cl.Nodes) > 0 {
		c.Server = spec(cl.Nodes[0].Name)
		for _, n := range cl.Nodes[1:] {
			c.Agents = append(c.Agents, spec(n.Name))
		}
		return c
	}
	for i := 1; i <= cl.Agents; i++ {
		c.Agents = append(c.Agents, spec(fmt.Sprintf("k3s-agent-%d", i)))
	}
	return c
}

func (s *clusterSite) UpCluster(ctx context.Context, p Reporter) error {
	if s.k3s != nil {
		kc, err := k3s.Up(ctx, s.k3sConfig(p))
		if err != nil {
			return err
		}
		if err := s.state.WriteSecret("kubeconfig", kc); err != nil {
			return err
		}
	}
	c, err := s.clients()
	if err != nil {
		return err
	}
	v, err := c.Kube.Discovery().ServerVersion()
	if err != nil {
		return fmt.Errorf("cluster.kubeconfig %s: the API server does not answer (%w): check the file and that the cluster runs", s.kc, err)
	}
	whose := "existing cluster"
	if s.k3s != nil {
		whose = "k3s " + s.cfg.Cluster.K3sVersion
	}
	p.Step("control plane", "", "%s, Kubernetes %s (kubeconfig %s)", whose, v.GitVersion, s.kc)
	return nil
}

func (s *clusterSite) options() istioinstall.Options {
	o := IstioOptions(s.cfg)
	o.Hub, o.Tag, o.Istioctl = s.cfg.Istio.Hub, s.version, s.istioctl
	// VMs given istiod's address share the pods' network: no gateway.
	o.OneNetwork = s.cfg.Istio.IstiodAddress != ""
	return o
}

func (s *clusterSite) InstallIstio(ctx context.Context, p Reporter) error {
	c, err := s.clients()
	if err != nil {
		return err
	}
	// Never an install over a control plane someone else runs: the VMs
	// join it as it is.
	cp, err := s.joinedPlane(ctx)
	if err != nil {
		return err
	}
	if cp != nil {
		return s.join(ctx, p, c, cp)
	}
	if s.cfg.Istio.Install == config.InstallNever {
		return fmt.Errorf("istio.install is never (join only) but no Istio control plane runs in this cluster: install Istio with WorkloadEntry " +
			"autoregistration, health checks and an east-west gateway for istiod, or set istio.install to auto")
	}
	oneNetwork := s.cfg.Istio.IstiodAddress != ""
	if oneNetwork && s.cfg.Workload.Network != s.cfg.Istio.Network {
		return fmt.Errorf("istio.istiodAddress makes a single-network mesh (VMs reach istiod directly, no east-west gateway), but workload.network %q is not istio.network %q: "+
			"set both to one network, or leave istio.istiodAddress empty for the VMs' own network behind an east-west gateway", s.cfg.Workload.Network, s.cfg.Istio.Network)
	}
	objs, keep, err := s.Istio()
	if err != nil {
		return err
	}
	rc, err := RestConfig(s.kc)
	if err != nil {
		return err
	}
	changes, err := istioinstall.Apply(ctx, rc, objs, keep)
	if err != nil {
		return err
	}
	from := "the embedded charts"
	if s.istioctl != "" {
		from = s.istioctl
	}
	p.Step("control plane", "", "Istio %s: %d objects rendered from %s: %s", s.version, len(objs), from, istioinstall.Summary(changes))
	for _, ch := range changes {
		if ch.Action == istioinstall.Yours {
			p.Step("control plane", "", "%s exists and is not meshvm's: left as it is", ch.Ref)
		}
	}
	addr, err := istioinstall.WaitReady(ctx, c.Kube, s.cfg.Istio.Revision, !oneNetwork, func(msg string) { p.Step("control plane", "", "%s", msg) })
	if err != nil {
		return err
	}
	if oneNetwork {
		p.Step("control plane", "", "istiod ready; one network: VMs reach it directly at %s (istio.istiodAddress), no east-west gateway", s.cfg.Istio.IstiodAddress)
		return nil
	}
	s.mu.Lock()
	s.addr = addr
	s.mu.Unlock()
	p.Step("control plane", "", "istiod ready; VMs reach it through the east-west gateway at %s", addr)
	return nil
}

// join waits until the Istio of yours serves and its gateway has an
// address, changing nothing of it.
func (s *clusterSite) join(ctx context.Context, p Reporter, c workload.Clients, cp *istioinstall.ControlPlane) error {
	p.Step("control plane", "", "joining the Istio of yours: %s; meshvm installs and changes none of it", cp)
	last := ""
	gateway, direct := s.istiodRoute(cp)
	for {
		_, notReady := istioinstall.DeploymentReady(ctx, c.Kube, cp.Deployment)
		addr, through := direct, "directly (istio.istiodAddress, one network)"
		if gateway != "" {
			var err error
			if addr, err = istioinstall.GatewayAddress(ctx, c.Kube, gateway); err != nil {
				return err
			}
			through = "through " + gateway
		}
		if notReady == nil && addr != "" {
			s.mu.Lock()
			s.addr = addr
			s.mu.Unlock()
			p.Step("control plane", "", "istiod ready; VMs reach it %s at %s", through, addr)
			return nil
		}
		waiting := "Service " + gateway + " has no LoadBalancer address yet"
		if notReady != nil {
			waiting = notReady.Error()
		}
		if waiting != last {
			p.Step("control plane", "", "waiting: %s", waiting)
			last = waiting
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the Istio of yours is not ready: %s: %w", last, ctx.Err())
		case <-time.After(2 * time.Second):
		}
	}
}

func (s *clusterSite) Istio() ([]istioinstall.Object, istioinstall.Keep, error) {
	objs, err := istioinstall.RenderIn(s.state.Path("istio-render"), s.options())
	return objs, istioinstall.Everything, err
}

func (s *clusterSite) EastWest(ctx context.Context) (string, string) {
	c, err := s.clients()
	if err != nil {
		return "unknown", err.Error()
	}
	cp, _ := s.joinedPlane(ctx)
	gateway, direct := s.istiodRoute(cp)
	if gateway == "" {
		return "not run", "one network: VMs reach istiod directly at " + direct
	}
	addr, err := istioinstall.GatewayAddress(ctx, c.Kube, gateway)
	switch {
	case err != nil:
		return "missing", err.Error()
	case addr == "" && cp != nil:
		return "pending", "Service " + gateway + " (yours) has no LoadBalancer address yet"
	case addr == "":
		if held, _ := istioinstall.PortConflicts(ctx, c.Kube); len(held) > 0 {
			return "pending", strings.Join(held, "; ") + ": " + istioinstall.PortConflictFix
		}
		return "pending", "no LoadBalancer address yet: does the cluster have a load balancer (k3s: klipper)?"
	}
	return "ready", "VMs reach istiod at " + addr
}

func (s *clusterSite) IstiodReady(ctx context.Context, rev string) (string, error) {
	c, err := s.clients()
	if err != nil {
		return "", err
	}
	ref, err := s.istiodDeployment(ctx, rev)
	if err != nil {
		return "", err
	}
	return istioinstall.DeploymentReady(ctx, c.Kube, ref)
}

// istiodDeployment is the revision's istiod Deployment (namespace/name):
// the joined Istio's of that revision, else meshvm's.
func (s *clusterSite) istiodDeployment(ctx context.Context, rev string) (string, error) {
	cp, err := s.joinedPlane(ctx)
	if err != nil {
		return "", err
	}
	if cp == nil {
		return istioinstall.Namespace + "/" + istioinstall.IstiodService(rev), nil
	}
	if revisionName(rev) == cp.Revision {
		return cp.Deployment, nil
	}
	c, err := s.clients()
	if err != nil {
		return "", err
	}
	f, err := istioinstall.InspectForeign(ctx, c.Kube)
	if err != nil {
		return "", err
	}
	other, ok := f.Revision(rev)
	if !ok {
		return "", fmt.Errorf("no istiod of revision %s runs in this cluster (the VMs join %s)", revisionName(rev), cp)
	}
	return other.Deployment, nil
}

func (s *clusterSite) Revision(ctx context.Context) string {
	if cp, _ := s.joinedPlane(ctx); cp != nil && workloadfiles.Revisioned(cp.Revision) {
		return cp.Revision
	}
	return s.cfg.Istio.Revision
}

func (s *clusterSite) IstiodVersion(ctx context.Context, rev string) (string, string, error) {
	c, err := s.clients()
	if err != nil {
		return "", "", err
	}
	ref, err := s.istiodDeployment(ctx, rev)
	if err != nil {
		return "", "", err
	}
	return istioinstall.RunningVersion(ctx, c.Kube, ref)
}

// revisionOf reads the istio.io/rev of the istiod pod that registered the
// entry.
func (s *clusterSite) RevisionOf(ctx context.Context, controller string) string {
	c, err := s.clients()
	if err != nil || controller == "" {
		return ""
	}
	ns := istioinstall.Namespace
	if cp, _ := s.joinedPlane(ctx); cp != nil {
		ns, _, _ = strings.Cut(cp.Deployment, "/")
	}
	pod, err := c.Kube.CoreV1().Pods(ns).Get(ctx, controller, metav1.GetOptions{})
	if err != nil {
		return ""
	}
	return pod.Labels["istio.io/rev"]
}

func (s *clusterSite) IstiodAddress(ctx context.Context, _ string) (string, error) {
	c, err := s.clients()
	if err != nil {
		return "", err
	}
	cp, err := s.joinedPlane(ctx)
	if err != nil {
		return "", err
	}
	gateway, direct := s.istiodRoute(cp)
	if gateway == "" {
		return direct, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.addr != "" {
		return s.addr, nil
	}
	addr, err := istioinstall.GatewayAddress(ctx, c.Kube, gateway)
	if err != nil {
		return "", err
	}
	if addr == "" {
		return "", reason.Wrap(errors.New("the east-west gateway has no LoadBalancer address yet"), reason.NoGatewayAddress)
	}
	s.addr = addr
	return addr, nil
}

func (s *clusterSite) Sidecar(ctx context.Context, arch, version string) (onboard.Sidecar, error) {
	var side proxyimage.Sidecar
	var err error
	if deb := s.cfg.Istio.SidecarDeb; deb != "" {
		side, err = proxyimage.FromDeb(s.state.Path("sidecar"), deb, arch)
	} else {
		// The VMs' proxy comes from where the cluster's images do.
		f := proxyimage.Fetcher{CacheDir: s.state.Path("sidecar")}
		side, err = f.Fetch(ctx, proxyimage.Image(s.options().ImageHub(), version), arch)
	}
	if err != nil {
		return onboard.Sidecar{}, err
	}
	return onboard.Sidecar{PilotAgent: side.Path("pilot-agent"), Envoy: side.Path("envoy"), BootstrapTemplate: side.Path("envoy_bootstrap_tmpl.json")}, nil
}

// downCluster deletes the k3s machines up created; in a cluster of yours it
// uninstalls what up installed: the workload's namespace and Istio (its
// CRDs stay). Your cluster itself is not ours to delete.
func (s *clusterSite) DownCluster(ctx context.Context, p Reporter, _ bool) error {
	if s.k3s != nil {
		c := s.k3sConfig(p)
		if len(s.cfg.Cluster.Nodes) > 0 {
			// Nodes you brought stay; k3s goes.
			if err := k3s.Uninstall(ctx, c); err != nil {
				return err
			}
		} else {
			for _, m := range append([]machine.Spec{c.Server}, c.Agents...) {
				if err := s.k3s.Delete(ctx, m.Name); err != nil {
					return err
				}
				p.Step("cluster", "", "k3s machine %s deleted", m.Name)
			}
		}
		if err := os.Remove(s.kc); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	c, err := s.clients()
	if err != nil {
		return err
	}
	// Revoked first and by name: the tokens die even if the namespace
	// stays or takes a while to go.
	revoked, err := workload.RevokeAll(ctx, c.Kube, s.cfg.Workload.Namespace)
	if err != nil {
		return err
	}
	p.Step("cluster", "", "%d VM credential(s) revoked in %s", revoked, s.cfg.Workload.Namespace)
	removed, err := workload.Remove(ctx, c, WorkloadSpec(s.cfg))
	for _, ch := range removed {
		p.Step("cluster", "", "%s %s", ch.Object, ch.Action)
	}
	if err != nil {
		return err
	}
	// verify's client pods live in their own namespace, when meshvm made it.
	if ch, err := workload.RemoveNamespace(ctx, c.Kube, traffic.Namespace); err != nil {
		return err
	} else if ch.Action == ownership.Yours {
		p.Step("cluster", "", "%s %s", ch.Object, ch.Action)
	}
	if cp, _ := s.joinedPlane(ctx); cp != nil {
		p.Step("cluster", "", "Istio is yours (%s): nothing of it removed; the cluster itself is yours and stays", cp.Deployment)
		return nil
	}
	// Every revision meshvm installed, with or without a gateway.
	revs, err := s.ownRevisions(ctx, c)
	if err != nil {
		return err
	}
	objs, err := istioinstall.RenderRevisions(s.options(), revs)
	if err != nil {
		return err
	}
	rc, err := RestConfig(s.kc)
	if err != nil {
		return err
	}
	changes, err := istioinstall.Uninstall(ctx, rc, objs, istioinstall.Everything)
	if err != nil {
		return err
	}
	p.Step("cluster", "", "Istio uninstalled: %s; the cluster itself is yours and stays", istioinstall.Summary(changes))
	return nil
}

// ownRevisions are the revisions of the istiod Deployments meshvm made,
// and the config's.
func (s *clusterSite) ownRevisions(ctx context.Context, c workload.Clients) ([]string, error) {
	revs := []string{s.cfg.Istio.Revision}
	deps, err := c.Kube.AppsV1().Deployments(istioinstall.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=istiod"})
	if err != nil {
		return nil, fmt.Errorf("list istiod Deployments: %w", err)
	}
	for i := range deps.Items {
		if d := &deps.Items[i]; ownership.Owned(d) {
			if rev := d.Labels["istio.io/rev"]; !slices.ContainsFunc(revs, func(r string) bool { return sameRevision(r, rev) }) {
				revs = append(revs, rev)
			}
		}
	}
	return revs, nil
}

func (s *clusterSite) TrafficUncheckable() string {
	if s.cfg.MachineProvider() == config.Lab {
		return "lab VMs run the lab's Envoy stand-in, which has no data path"
	}
	return ""
}
