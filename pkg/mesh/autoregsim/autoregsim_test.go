package autoregsim

import (
	"os"
	"strings"
	"testing"

	"github.com/meshvm/meshvm/pkg/mesh/workload"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
)

// Names as istiod's autoregisteredWorkloadEntryName makes them.
func TestEntryName(t *testing.T) {
	for _, c := range []struct {
		p    Proxy
		want string
	}{
		{Proxy{Group: "g", IP: "10.0.0.2", Network: "net1"}, "g-10.0.0.2-net1"},
		{Proxy{Group: "g", IP: "10.0.0.2"}, "g-10.0.0.2"},
		{Proxy{Group: "g", IP: "fd00::1"}, "g-fd00--1"},
		{Proxy{Group: strings.Repeat("a", 250), IP: "10.0.0.2"}, strings.Repeat("a", 244) + "-10.0.0.2"},
	} {
		if got := EntryName(c.p); got != c.want {
			t.Errorf("%+v: got %q, want %q", c.p, got, c.want)
		}
	}
}

// pilot-agent's view of the files meshvm delivers: the group, namespace,
// address, network and labels from cluster.env, the probe from the mesh config.
func TestPilotReadsTheDeliveredFiles(t *testing.T) {
	s := workload.Spec{Namespace: "vmns", ServiceAccount: "vmsa", Group: "external-app", Port: 8000, PortName: "http",
		Network: "vm-network", ProbePath: "/healthz", ProbePort: 8000, ProbePeriod: 5, ProbeInitialDelay: 1}
	files, err := workloadfiles.Generate(workloadfiles.Options{Mesh: "defaultConfig: {}\n",
		Group:          workloadfiles.Group{Name: s.Group, Namespace: s.Namespace, Spec: workload.GroupSpec(s)},
		IstioNamespace: "istio-system", ClusterID: "c1", AutoRegister: true, ExternalIP: "10.1.2.3", IstiodIP: "10.1.2.1",
		RootCert: []byte("ROOT"), Token: []byte("a.b.c")})
	if err != nil {
		t.Fatal(err)
	}
	vm := map[string][]byte{ClusterEnvPath: files.ClusterEnv, MeshPath: files.Mesh}
	p := New(nil, Options{}).Pilot(func(path string) ([]byte, error) {
		if b, ok := vm[path]; ok {
			return b, nil
		}
		return nil, os.ErrNotExist
	}, "10.1.2.3", nil)
	proxy, probe, err := p.config()
	if err != nil {
		t.Fatal(err)
	}
	if proxy.Group != s.Group || proxy.Namespace != s.Namespace || proxy.IP != "10.1.2.3" || proxy.Network != s.Network ||
		!proxy.HealthChecks || proxy.Labels["app"] != s.Group || proxy.Labels["service.istio.io/canonical-name"] != s.Group {
		t.Errorf("proxy %+v", proxy)
	}
	if probe.GetHttpGet().GetPath() != "/healthz" || probe.GetHttpGet().GetPort() != 8000 || probe.GetPeriodSeconds() != 5 || probe.GetInitialDelaySeconds() != 1 {
		t.Errorf("probe %v", probe)
	}
	delete(vm, MeshPath)
	if _, _, err := p.config(); err == nil {
		t.Error("no mesh config: want an error")
	}
}
