package istioinstall

import (
	"context"
	"fmt"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/meshvm/meshvm/pkg/mesh/istioversion"
	"github.com/meshvm/meshvm/pkg/mesh/ownership"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
	"github.com/meshvm/meshvm/pkg/reason"
)

// ControlPlane is an istiod meshvm did not install, as the cluster shows it.
type ControlPlane struct {
	Deployment string // namespace/name
	Revision   string // istio.io/rev, "default" when unset
	Version    string // the image's tag
	ClusterID  string // istiod's CLUSTER_ID
	MeshID     string // the mesh config's defaultConfig.meshId, else its trust domain
	Network    string // the istiod namespace's topology.istio.io/network
	// Autoregistration and HealthChecks are istiod's WorkloadEntry switches.
	Autoregistration, HealthChecks bool
	// Gateway is a Service exposing istiod's 15012 and 15017 to VMs (an
	// east-west gateway), "" when there is none.
	Gateway string
}

// Foreign is what shows an Istio meshvm did not install: its control
// planes, and mesh config ConfigMaps (istio or istio-<rev>, label
// istio.io/rev) meshvm neither labelled nor applied.
type Foreign struct {
	ControlPlanes []ControlPlane
	MeshConfigs   []string // namespace/name
	// Own says meshvm's own Istio is in the cluster too (an istiod
	// Deployment or mesh config meshvm made).
	Own bool
}

// Revision is the control plane of revision rev ("" or "default": the default).
func (f Foreign) Revision(rev string) (ControlPlane, bool) {
	for _, cp := range f.ControlPlanes {
		if cp.Revision == workloadfiles.RevisionName(rev) {
			return cp, true
		}
	}
	return ControlPlane{}, false
}

func (f Foreign) revisions() []string {
	var out []string
	for _, cp := range f.ControlPlanes {
		out = append(out, cp.Revision)
	}
	return out
}

// Found reports whether there is anything.
func (f Foreign) Found() bool { return len(f.ControlPlanes)+len(f.MeshConfigs) > 0 }

// InspectForeign reads the cluster for an Istio meshvm did not install.
func InspectForeign(ctx context.Context, kc kubernetes.Interface) (Foreign, error) {
	var f Foreign
	cms, err := kc.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{LabelSelector: "istio.io/rev"})
	if err != nil {
		return f, fmt.Errorf("look for Istio's mesh config: %w", err)
	}
	mesh := map[string]string{} // namespace/name -> mesh YAML
	for i := range cms.Items {
		cm := &cms.Items[i]
		if _, ok := cm.Data["mesh"]; ok && (cm.Name == "istio" || strings.HasPrefix(cm.Name, "istio-")) {
			mesh[cm.Namespace+"/"+cm.Name] = cm.Data["mesh"]
			if ownership.Owned(cm) {
				f.Own = true
			} else {
				f.MeshConfigs = append(f.MeshConfigs, cm.Namespace+"/"+cm.Name)
			}
		}
	}
	deps, err := kc.AppsV1().Deployments("").List(ctx, metav1.ListOptions{LabelSelector: "app=istiod"})
	if err != nil {
		return f, fmt.Errorf("look for istiod Deployments: %w", err)
	}
	svcs, err := kc.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return f, fmt.Errorf("look for an east-west gateway: %w", err)
	}
	for i := range deps.Items {
		d := &deps.Items[i]
		if ownership.Owned(d) {
			f.Own = true
			continue
		}
		cp := readControlPlane(d, svcs.Items)
		cp.MeshID = meshID(mesh[d.Namespace+"/"+MeshConfigName(cp.Revision)])
		if ns, err := kc.CoreV1().Namespaces().Get(ctx, d.Namespace, metav1.GetOptions{}); err == nil {
			cp.Network = ns.Labels["topology.istio.io/network"]
		}
		f.ControlPlanes = append(f.ControlPlanes, cp)
	}
	sort.Strings(f.MeshConfigs)
	return f, nil
}

// readControlPlane reads an istiod Deployment, and finds among svcs a
// gateway exposing its ports.
func readControlPlane(d *appsv1.Deployment, svcs []corev1.Service) ControlPlane {
	cp := ControlPlane{Deployment: d.Namespace + "/" + d.Name, Revision: workloadfiles.RevisionName(d.Labels["istio.io/rev"])}
	cp.Version = istioversion.ImageVersion(d)
	for _, c := range d.Spec.Template.Spec.Containers {
		if c.Name != "discovery" {
			continue
		}
		for _, e := range c.Env {
			switch e.Name {
			case "CLUSTER_ID":
				cp.ClusterID = e.Value
			case "PILOT_ENABLE_WORKLOAD_ENTRY_AUTOREGISTRATION":
				cp.Autoregistration = e.Value == "true"
			case "PILOT_ENABLE_WORKLOAD_ENTRY_HEALTHCHECKS":
				cp.HealthChecks = e.Value == "true"
			}
		}
	}
	for _, s := range svcs {
		if s.Labels["istio"] != "eastwestgateway" {
			continue
		}
		ports := map[int32]bool{}
		for _, p := range s.Spec.Ports {
			ports[p.Port] = true
		}
		if ports[15012] && ports[15017] {
			cp.Gateway = s.Namespace + "/" + s.Name
			break
		}
	}
	return cp
}

// meshID is a mesh config's defaultConfig.meshId, else its trust domain
// (Istio's own default), else "".
func meshID(meshYAML string) string {
	var m struct {
		TrustDomain   string `json:"trustDomain"`
		DefaultConfig struct {
			MeshID string `json:"meshId"`
		} `json:"defaultConfig"`
	}
	if yaml.Unmarshal([]byte(meshYAML), &m) != nil {
		return ""
	}
	if m.DefaultConfig.MeshID != "" {
		return m.DefaultConfig.MeshID
	}
	return m.TrustDomain
}

// Needs are the changes a control plane needs before VMs can join it, each
// as the exact change to make. direct says the VMs reach istiod without a
// gateway (a single-network mesh, istio.istiodAddress).
func (cp ControlPlane) Needs(direct bool) []string {
	var out []string
	set := func(env string) string {
		return fmt.Sprintf("set %s=true on Deployment %s (istioctl install --set values.pilot.env.%s=true)", env, cp.Deployment, env)
	}
	if !cp.Autoregistration {
		out = append(out, "WorkloadEntry autoregistration: "+set("PILOT_ENABLE_WORKLOAD_ENTRY_AUTOREGISTRATION"))
	}
	if !cp.HealthChecks {
		out = append(out, "VM health checks: "+set("PILOT_ENABLE_WORKLOAD_ENTRY_HEALTHCHECKS"))
	}
	if cp.Gateway == "" && !direct {
		out = append(out, "istiod reachable from the VMs: an east-west gateway Service (label istio=eastwestgateway) exposing 15012 and 15017, "+
			"as samples/multicluster/gen-eastwest-gateway.sh makes, and istiod exposed through it (samples/multicluster/expose-istiod.yaml); "+
			"or, in a single-network mesh, set istio.istiodAddress to where VMs reach istiod's 15012 and workload.network to the mesh's network")
	}
	return out
}

// String says what the control plane is, in one line.
func (cp ControlPlane) String() string {
	return fmt.Sprintf("Deployment %s (revision %s, Istio %s, cluster %s, mesh %s, network %s)", cp.Deployment, cp.Revision,
		orUnknown(cp.Version), orUnknown(cp.ClusterID), orUnknown(cp.MeshID), orUnknown(cp.Network))
}

func orUnknown(s string) string {
	if s == "" {
		return "unset"
	}
	return s
}

// Error is up's refusal to install next to an Istio of yours (istio.install:
// always): what it found, and what VMs would need of it to join it instead.
func (f Foreign) Error() error {
	var b strings.Builder
	b.WriteString("an Istio meshvm did not install is in this cluster; meshvm changes none of it:")
	for _, cp := range f.ControlPlanes {
		fmt.Fprintf(&b, "\n  %s", cp)
		if needs := cp.Needs(false); len(needs) > 0 {
			b.WriteString("\n    VMs would need of it:")
			for _, n := range needs {
				b.WriteString("\n    - " + n)
			}
		}
	}
	for _, cm := range f.MeshConfigs {
		fmt.Fprintf(&b, "\n  ConfigMap %s (its mesh config)", cm)
	}
	b.WriteString("\nistio.install is always: meshvm installs Istio only where there is none; set istio.install to auto to join the VMs to this one")
	return fmt.Errorf("%s", b.String())
}

// Joinable is the control plane VMs can join: the one of revision rev
// (istio.revision; "" takes the only one), with nothing missing (direct as
// for Needs). Otherwise the error names what is in the way and the change
// that fixes it.
func (f Foreign) Joinable(direct bool, rev string) (ControlPlane, error) {
	if rev != "" {
		if cp, ok := f.Revision(rev); ok {
			f.ControlPlanes = []ControlPlane{cp}
		} else if len(f.ControlPlanes) > 0 && !f.Own {
			return ControlPlane{}, fmt.Errorf("istio.revision is %s, but no istiod of that revision runs in this cluster; its revisions: %s: "+
				"set istio.revision to one of them", rev, strings.Join(f.revisions(), ", "))
		}
	}
	switch n := len(f.ControlPlanes); {
	case f.Own:
		// meshvm's revisions are its own to add and remove; yours are not.
		var names []string
		for _, cp := range f.ControlPlanes {
			names = append(names, cp.String())
		}
		for _, cm := range f.MeshConfigs {
			names = append(names, "ConfigMap "+cm)
		}
		return ControlPlane{}, reason.Wrap(fmt.Errorf("meshvm's own Istio is in this cluster, and another one meshvm did not install (%s); meshvm changes none of it: "+
			"the VMs join meshvm's Istio or yours, not a mix: remove the one you do not want", strings.Join(names, "; ")), reason.TwoIstios)
	case n == 0:
		return ControlPlane{}, fmt.Errorf("an Istio mesh config meshvm did not install is in this cluster (ConfigMap %s) but no istiod Deployment (label app=istiod) runs it: "+
			"meshvm joins VMs only to a running control plane", strings.Join(f.MeshConfigs, ", "))
	case n > 1:
		var names []string
		for _, cp := range f.ControlPlanes {
			names = append(names, cp.String())
		}
		return ControlPlane{}, fmt.Errorf("several Istio control planes run in this cluster (%s): set istio.revision to the one the VMs join (%s)",
			strings.Join(names, "; "), strings.Join(f.revisions(), ", "))
	}
	cp := f.ControlPlanes[0]
	if needs := cp.Needs(direct); len(needs) > 0 {
		return cp, fmt.Errorf("VMs cannot join %s yet; meshvm changes none of it, so make these changes, then run up again:\n- %s", cp, strings.Join(needs, "\n- "))
	}
	return cp, nil
}
