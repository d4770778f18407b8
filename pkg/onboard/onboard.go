package onboard

import (
	"context"
	"fmt"

	"github.com/meshvm/meshvm/pkg/agentclient"
	"github.com/meshvm/meshvm/pkg/workloadfiles"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

// Sidecar names the local sidecar files for the VM's architecture.
type Sidecar struct {
	PilotAgent, Envoy, BootstrapTemplate string
}

// Hosts are the managed /etc/hosts lines: istiod, and the VM's own name.
type Hosts struct {
	IstiodIP, IstiodName string
	VMIP, VMName         string
}

// Report says what onboarding did.
type Report struct {
	Steps []*agentv1.StepResult
	// Sent and Skipped list delivered files by whether data crossed the wire.
	Sent, Skipped []string
	Sidecar       *agentv1.SidecarState
}

// Onboard runs the postinst, delivers what differs, and (re)starts the
// sidecar: a restart when anything was sent, otherwise a start, which leaves
// a running sidecar alone.
func Onboard(ctx context.Context, c *agentclient.Client, files workloadfiles.Files, side Sidecar, h Hosts) (Report, error) {
	var r Report
	hosts := []*agentv1.HostsEntry{{Ip: h.IstiodIP, Names: []string{h.IstiodName}}, {Ip: h.VMIP, Names: []string{h.VMName}}}
	steps, err := c.Install(ctx, &agentv1.InstallRequest{HostsEntries: hosts})
	r.Steps = steps
	if err != nil {
		return r, err
	}
	deliveries := []agentclient.File{
		agentclient.LocalFile("/usr/local/bin/pilot-agent", side.PilotAgent),
		agentclient.LocalFile("/usr/local/bin/envoy", side.Envoy),
		agentclient.LocalFile("/var/lib/istio/envoy/envoy_bootstrap_tmpl.json", side.BootstrapTemplate),
		agentclient.BytesFile("/var/lib/istio/envoy/cluster.env", files.ClusterEnv),
		agentclient.BytesFile("/etc/istio/config/mesh", files.Mesh),
		agentclient.BytesFile("/etc/certs/root-cert.pem", files.RootCert),
		agentclient.BytesFile("/var/run/secrets/tokens/istio-token", files.Token),
	}
	for _, f := range deliveries {
		res, err := c.PutFile(ctx, f)
		if err != nil {
			return r, err
		}
		if res.Sent {
			r.Sent = append(r.Sent, f.Path)
		} else {
			r.Skipped = append(r.Skipped, f.Path)
		}
	}
	// The binaries' owner and mode are set by the postinst: run it again now
	// that they exist (a no-op when nothing changed).
	if steps, err = c.Install(ctx, &agentv1.InstallRequest{HostsEntries: hosts}); err != nil {
		r.Steps = steps
		return r, err
	}
	action := agentv1.SidecarAction_SIDECAR_ACTION_START
	if len(r.Sent) > 0 {
		action = agentv1.SidecarAction_SIDECAR_ACTION_RESTART
	}
	if r.Sidecar, err = c.Sidecar(ctx, action); err != nil {
		return r, fmt.Errorf("sidecar: %w", err)
	}
	return r, nil
}
