//go:build linux

package onboard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/meshvm/meshvm/pkg/agenterr"
	"github.com/meshvm/meshvm/pkg/host/formcache"
	"github.com/meshvm/meshvm/pkg/host/statedir"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
	"github.com/meshvm/meshvm/vmagent/agenttest"
)

// Onboarding one VM asks the agent's version once per session (Connect's
// wait, which the session and the compressed delivery reuse) and stats
// every file in one StatFiles: against a real in-process agent, the RPCs
// that arrive are counted by method. Before: GetVersion 2 (3 with
// compressed forms), StatFiles once per file (7): 20 RPCs, now 12.
func TestOnboardRPCs(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	state, err := statedir.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// Connect dials the agent port on the VM's address: an address of
	// 127/8 of the test's own (all of it is loopback on Linux).
	ip := fmt.Sprintf("127.%d.%d.%d", 1+rand.IntN(250), rand.IntN(250), 1+rand.IntN(250))
	lis, err := net.Listen("tcp", net.JoinHostPort(ip, AgentPort))
	if err != nil {
		t.Skipf("no loopback address %s here (%v)", ip, err)
	}
	lis.Close()
	ca, err := state.AgentCA()
	if err != nil {
		t.Fatal(err)
	}
	pair, _, err := state.VMCert(ca, "vm1", []string{ip})
	if err != nil {
		t.Fatal(err)
	}
	a := agenttest.Start(t, agenttest.Options{Listen: net.JoinHostPort(ip, AgentPort), CA: ca, ServerCert: pair.Cert, ServerKey: pair.Key})
	m := machine.Machine{Name: "vm1", State: machine.Running, Addresses: []string{ip}, Arch: runtime.GOARCH}

	local := t.TempDir()
	// The binaries from their compressed forms, as hostctl sends them: the
	// agent is asked whether it takes them.
	side := Sidecar{PilotAgent: filepath.Join(local, "pilot-agent"), Envoy: filepath.Join(local, "envoy"), BootstrapTemplate: filepath.Join(local, "bootstrap.json"),
		Forms: formcache.New(t.TempDir())}
	for _, p := range []string{side.PilotAgent, side.Envoy, side.BootstrapTemplate} {
		// Binaries of 5 MiB, over the size the cache keeps forms of.
		data := []byte("content of " + filepath.Base(p))
		if p != side.BootstrapTemplate {
			data = bytes.Repeat(data, 5<<20/len(data))
		}
		if err := os.WriteFile(p, data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := workloadfiles.Files{ClusterEnv: []byte("ISTIO_META_NETWORK='vm-network'\n"), Mesh: []byte("defaultConfig: {}\n"),
		RootCert: []byte("-----BEGIN CERTIFICATE-----\n"), Token: []byte("a.b.c")}

	c, err := Connect(ctx, state, m)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Version(ctx); err != nil { // as the session's "answering" step does
		t.Fatal(err)
	}
	rep, err := Onboard(ctx, c, files, side, Hosts{IstiodIP: "10.9.8.7", IstiodName: "istiod.istio-system.svc", VMIP: ip, VMName: "vm1"}, false)
	// The sandbox has no systemd: everything up to starting the sidecar runs.
	if !errors.Is(err, agenterr.FailedPrecondition) || len(rep.Sent) != 7 {
		t.Fatalf("onboard: sent %v, %v; want all 7 files sent and the sidecar refused for want of systemd", rep.Sent, err)
	}
	want := map[string]int{"GetVersion": 1, "Install": 2, "StatFiles": 1, "PutFile": 7, "ControlSidecar": 1}
	if diff := cmp.Diff(want, a.Calls()); diff != "" {
		t.Errorf("RPCs of one onboarding (-want +got):\n%s", diff)
	}
}

// A proxyless VM gets pilot-agent only: no Envoy, no bootstrap template.
func TestProxylessSendsPilotAgentOnly(t *testing.T) {
	side := Sidecar{PilotAgent: "/x/pilot-agent", Envoy: "/x/envoy", BootstrapTemplate: "/x/bootstrap.json"}.Proxyless()
	files, err := side.binaries()
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 1 || files[0].Path != "/usr/local/bin/pilot-agent" || side.BootstrapTemplate != "" {
		t.Errorf("proxyless deliveries %+v (template %q), want pilot-agent alone", files, side.BootstrapTemplate)
	}
}
