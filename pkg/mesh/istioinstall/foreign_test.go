package istioinstall

import (
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func istiod(rev, image string, env map[string]string) *appsv1.Deployment {
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "istiod", Namespace: "istio-system", Labels: map[string]string{"app": "istiod"}}}
	if rev != "" {
		d.Name, d.Labels["istio.io/rev"] = "istiod-"+rev, rev
	}
	c := corev1.Container{Name: "discovery", Image: image}
	for k, v := range env {
		c.Env = append(c.Env, corev1.EnvVar{Name: k, Value: v})
	}
	d.Spec.Template.Spec.Containers = []corev1.Container{{Name: "other", Image: "x:9"}, c}
	return d
}

func TestReadControlPlane(t *testing.T) {
	gw := corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "istio-eastwestgateway", Namespace: "istio-system", Labels: map[string]string{"istio": "eastwestgateway"}},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 15021}, {Port: 15443}, {Port: 15012}, {Port: 15017}}}}
	partial := gw
	partial.Spec.Ports = []corev1.ServicePort{{Port: 15443}}

	cp := readControlPlane(istiod("canary", "docker.io/istio/pilot:1.30.2", map[string]string{"CLUSTER_ID": "c1",
		"PILOT_ENABLE_WORKLOAD_ENTRY_AUTOREGISTRATION": "true", "PILOT_ENABLE_WORKLOAD_ENTRY_HEALTHCHECKS": "true"}), []corev1.Service{partial, gw})
	want := ControlPlane{Deployment: "istio-system/istiod-canary", Revision: "canary", Version: "1.30.2", ClusterID: "c1",
		Autoregistration: true, HealthChecks: true, Gateway: "istio-system/istio-eastwestgateway"}
	if cp != want {
		t.Errorf("got %+v\nwant %+v", cp, want)
	}
	if n := cp.Needs(false); len(n) != 0 {
		t.Errorf("a control plane VMs can join: needs %v", n)
	}

	// Istio's defaults: no autoregistration, no health checks, no gateway.
	bare := readControlPlane(istiod("", "registry.local:5000/pilot@sha256:abcd", nil), []corev1.Service{partial})
	if bare.Revision != "default" || bare.Version != "" || bare.Gateway != "" {
		t.Errorf("a default istiod by digest: %+v", bare)
	}
	needs := strings.Join(bare.Needs(false), "\n")
	for _, s := range []string{"set PILOT_ENABLE_WORKLOAD_ENTRY_AUTOREGISTRATION=true on Deployment istio-system/istiod",
		"set PILOT_ENABLE_WORKLOAD_ENTRY_HEALTHCHECKS=true", "exposing 15012 and 15017"} {
		if !strings.Contains(needs, s) {
			t.Errorf("needs lack %q:\n%s", s, needs)
		}
	}
	err := Foreign{ControlPlanes: []ControlPlane{bare}, MeshConfigs: []string{"istio-system/istio"}}.Error().Error()
	for _, s := range []string{"meshvm changes none of it", "Deployment istio-system/istiod (revision default, Istio unset", "ConfigMap istio-system/istio", "set istio.install to auto"} {
		if !strings.Contains(err, s) {
			t.Errorf("error lacks %q:\n%s", s, err)
		}
	}
}

func TestMeshID(t *testing.T) {
	for mesh, want := range map[string]string{
		"trustDomain: td\ndefaultConfig:\n  meshId: m1\n": "m1",
		"trustDomain: td\n": "td",
		"":                  "",
		"{not yaml":         "",
	} {
		if got := meshID(mesh); got != want {
			t.Errorf("meshID(%q) = %q, want %q", mesh, got, want)
		}
	}
}

func TestJoinable(t *testing.T) {
	ready := ControlPlane{Deployment: "istio-system/istiod", Revision: "default", Autoregistration: true, HealthChecks: true, Gateway: "istio-system/gw"}
	if cp, err := (Foreign{ControlPlanes: []ControlPlane{ready}}).Joinable(false, ""); err != nil || cp != ready {
		t.Errorf("one ready control plane: %+v %v", cp, err)
	}
	off := ready
	off.HealthChecks = false
	if _, err := (Foreign{ControlPlanes: []ControlPlane{off}}).Joinable(false, ""); err == nil || !strings.Contains(err.Error(), "PILOT_ENABLE_WORKLOAD_ENTRY_HEALTHCHECKS=true") ||
		!strings.Contains(err.Error(), "meshvm changes none of it") {
		t.Errorf("health checks off: %v", err)
	}
	canary := ready
	canary.Deployment, canary.Revision = "istio-system/istiod-canary", "canary"
	two := Foreign{ControlPlanes: []ControlPlane{ready, canary}}
	if _, err := two.Joinable(false, ""); err == nil || !strings.Contains(err.Error(), "set istio.revision to the one the VMs join (default, canary)") {
		t.Errorf("two control planes, no revision: %v", err)
	}
	for _, rev := range []string{"canary", "default"} {
		if cp, err := two.Joinable(false, rev); err != nil || cp.Revision != rev {
			t.Errorf("two control planes, revision %s: %+v %v", rev, cp, err)
		}
	}
	if _, err := two.Joinable(false, "stable"); err == nil || !strings.Contains(err.Error(), "no istiod of that revision runs") {
		t.Errorf("a revision that does not run: %v", err)
	}
	if _, err := (Foreign{MeshConfigs: []string{"istio-system/istio"}}).Joinable(false, ""); err == nil || !strings.Contains(err.Error(), "no istiod Deployment") {
		t.Errorf("a mesh config alone: %v", err)
	}
}

// In a single-network mesh the VMs reach istiod directly: no gateway needed.
func TestDirectNeedsNoGateway(t *testing.T) {
	cp := ControlPlane{Deployment: "istio-system/istiod", Autoregistration: true, HealthChecks: true}
	if n := cp.Needs(false); len(n) != 1 || !strings.Contains(n[0], "set istio.istiodAddress") {
		t.Errorf("no gateway, not direct: %v", n)
	}
	if n := cp.Needs(true); len(n) != 0 {
		t.Errorf("no gateway, direct: %v", n)
	}
}

// Next to meshvm's own Istio, another control plane is not joined: that
// would move the VMs to another revision.
func TestNotJoinedNextToOurs(t *testing.T) {
	ready := ControlPlane{Deployment: "istio-system/istiod-canary", Revision: "canary", Autoregistration: true, HealthChecks: true, Gateway: "istio-system/gw"}
	_, err := (Foreign{ControlPlanes: []ControlPlane{ready}, Own: true}).Joinable(false, "")
	if err == nil || !strings.Contains(err.Error(), "meshvm's own Istio is in this cluster") || !strings.Contains(err.Error(), "istio-system/istiod-canary") {
		t.Errorf("got %v", err)
	}
}
