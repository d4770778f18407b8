package onboard

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/meshvm/meshvm/pkg/agenterr"
	"github.com/meshvm/meshvm/pkg/agentspec"
	"github.com/meshvm/meshvm/pkg/host/agentclient"
	"github.com/meshvm/meshvm/pkg/host/formcache"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

// Sidecar names the local sidecar files for the VM's architecture.
type Sidecar struct {
	// Envoy and BootstrapTemplate are empty for a proxyless VM: pilot-agent
	// alone is delivered.
	PilotAgent, Envoy, BootstrapTemplate string
	// Forms, when set, keeps the binaries' compressed forms (sent to agents
	// that take them) and digests.
	Forms *formcache.Cache
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
	// Restarted is true when the sidecar was restarted (it reconnects to istiod).
	Restarted bool
}

// TokenPath is where the sidecar reads its istio-ca token.
const TokenPath = agentspec.TokenPath

// Onboard runs the postinst, delivers what differs, and starts the sidecar,
// restarting it when something it reads only at start changed (a file, the
// hosts block) or when restart is set. A new token alone needs no restart:
// pilot-agent reads the token file for every certificate request. A start
// leaves a running sidecar alone.
func Onboard(ctx context.Context, c *agentclient.Client, files workloadfiles.Files, side Sidecar, h Hosts, restart bool) (Report, error) {
	var r Report
	hosts := []*agentv1.HostsEntry{{Ip: h.IstiodIP, Names: []string{h.IstiodName}}, {Ip: h.VMIP, Names: []string{h.VMName}}}
	steps, err := c.Install(ctx, &agentv1.InstallRequest{HostsEntries: hosts})
	r.Steps = steps
	if err != nil {
		return r, err
	}
	// A new hosts block (istiod or the VM moved) is read by a sidecar that starts.
	hostsChanged := false
	for _, st := range steps {
		if st.GetName() == "hosts" && st.GetOutcome() == agentv1.StepOutcome_STEP_OUTCOME_CHANGED {
			hostsChanged = true
		}
	}
	binaries, err := side.binaries()
	if err != nil {
		return r, err
	}
	deliveries := binaries
	if side.BootstrapTemplate != "" {
		deliveries = append(deliveries, agentclient.LocalFile("/var/lib/istio/envoy/envoy_bootstrap_tmpl.json", side.BootstrapTemplate))
	}
	deliveries = append(deliveries,
		agentclient.BytesFile("/var/lib/istio/envoy/cluster.env", files.ClusterEnv),
		agentclient.BytesFile("/etc/istio/config/mesh", files.Mesh),
		rootCert(files.RootCert),
		agentclient.BytesFile(TokenPath, files.Token),
	)
	results, err := c.PutFiles(ctx, deliveries)
	for _, res := range results {
		if res.Sent {
			r.Sent = append(r.Sent, res.Path)
		} else {
			r.Skipped = append(r.Skipped, res.Path)
		}
	}
	if err != nil {
		return r, err
	}
	// The binaries' owner and mode are set by the postinst: run it again now
	// that they exist (a no-op when nothing changed).
	if steps, err = c.Install(ctx, &agentv1.InstallRequest{HostsEntries: hosts}); err != nil {
		r.Steps = steps
		return r, err
	}
	action := agentv1.SidecarAction_SIDECAR_ACTION_START
	for _, p := range r.Sent {
		restart = restart || p != TokenPath
	}
	if restart || hostsChanged {
		action = agentv1.SidecarAction_SIDECAR_ACTION_RESTART
		r.Restarted = true
	}
	if r.Sidecar, err = sidecar(ctx, c, action); err != nil {
		return r, fmt.Errorf("%w: %w", ErrSidecar, err)
	}
	return r, nil
}

// ErrSidecar marks an Onboard that delivered the files but could not start
// or restart the sidecar.
var ErrSidecar = errors.New("sidecar")

// rootCert delivers istiod's root certificate. pilot-agent rewrites the
// file (it is in OUTPUT_CERTS): without the final newline when it starts,
// with it at each certificate rotation (seen on the lab with one-minute
// certificates). Either form is the same certificate, or every
// re-onboarding after a rotation would resend it and restart the sidecar.
func rootCert(pem []byte) agentclient.File {
	trimmed := bytes.TrimRight(pem, "\n")
	f := agentclient.BytesFile(workloadfiles.RootCertPath, trimmed)
	sum := sha256.Sum256(append(slices.Clip(trimmed), '\n'))
	f.Equivalent = []string{hex.EncodeToString(sum[:])}
	return f
}

// Proxyless is the sidecar without Envoy: pilot-agent only.
func (s Sidecar) Proxyless() Sidecar {
	s.Envoy, s.BootstrapTemplate = "", ""
	return s
}

// binaries are the deliveries of pilot-agent and envoy (none for a
// proxyless VM), from the cache of compressed forms when there is one.
func (s Sidecar) binaries() ([]agentclient.File, error) {
	bins := []struct{ path, local string }{{"/usr/local/bin/pilot-agent", s.PilotAgent}, {"/usr/local/bin/envoy", s.Envoy}}
	files := make([]agentclient.File, 0, len(bins))
	for _, b := range bins {
		if b.local == "" {
			continue
		}
		f := agentclient.LocalFile(b.path, b.local)
		if s.Forms != nil {
			var err error
			if f, err = s.Forms.File(b.path, b.local); err != nil {
				return nil, fmt.Errorf("sidecar binary %s: %w", b.local, err)
			}
		}
		files = append(files, f)
	}
	return files, nil
}

// sidecar starts or restarts the sidecar. Its capture rules may cut the
// very connection the call runs on; then the state is read again over a
// new one: the unit's state, not the lost reply, says whether it worked.
func sidecar(ctx context.Context, c *agentclient.Client, action agentv1.SidecarAction) (*agentv1.SidecarState, error) {
	cctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	st, err := c.Sidecar(cctx, action)
	cancel()
	if err == nil || !(errors.Is(err, agenterr.Unavailable) || errors.Is(err, context.DeadlineExceeded)) {
		return st, err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		st, gerr := c.SidecarState(cctx)
		cancel()
		if gerr == nil && st.GetActiveState() == "active" {
			return st, nil
		}
		if time.Now().After(deadline) {
			if gerr == nil {
				return nil, fmt.Errorf("%w; and the sidecar is %s/%s after reconnecting", err, st.GetActiveState(), st.GetSubState())
			}
			return nil, fmt.Errorf("%w; and its state is unknown after reconnecting (%v)", err, gerr)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
