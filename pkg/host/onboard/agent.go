// Package onboard installs vmagent on a machine through its provider, then
// onboards the VM through the agent alone: the postinst, the workload files
// and sidecar binaries (skipping what is already in place), and the sidecar.
package onboard

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/meshvm/meshvm/packaging"
	"github.com/meshvm/meshvm/pkg/agentspec"
	"github.com/meshvm/meshvm/pkg/host/agentclient"
	"github.com/meshvm/meshvm/pkg/host/statedir"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/mtls"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"

	"github.com/meshvm/meshvm/pkg/reason"
)

// AgentPort is where vmagent listens, as net.JoinHostPort takes it.
var AgentPort = strconv.Itoa(agentspec.Port)

// unitPath is where hostctl installs vmagent's unit.
const unitPath = "/etc/systemd/system/vmagent.service"

// Deps are what installing an agent needs.
type Deps struct {
	Provider machine.Provider
	State    *statedir.Dir
	// AgentBinary returns the static vmagent for a GOARCH.
	AgentBinary func(arch string) ([]byte, error)
}

// AgentIdentity is what an agent presents and pins: its server certificate
// and key, and the CA its callers' certificates must chain to.
type AgentIdentity struct {
	Cert, Key, ClientCA []byte
}

// PutAgent installs or updates vmagent (binary bin) with identity id on m
// through the machine provider and (re)starts it, without waiting for it to
// answer. Files already identical are not sent again, and the agent is
// restarted only when something it reads changed.
func PutAgent(ctx context.Context, p machine.Provider, m machine.Machine, id AgentIdentity, bin []byte) error {
	files := []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{"/usr/local/bin/vmagent", bin, 0o755},
		{unitPath, packaging.Unit, 0o644},
		{"/etc/meshvm/vmagent.yaml", packaging.Config, 0o644},
		{"/etc/meshvm/agent/server.pem", id.Cert, 0o600},
		{"/etc/meshvm/agent/server-key.pem", id.Key, 0o600},
		{"/etc/meshvm/agent/client-ca.pem", id.ClientCA, 0o600},
	}
	want := map[string][]byte{}
	for _, f := range files {
		want[f.path] = f.data
	}
	differ, err := machine.Differing(ctx, p, m.Name, want)
	if err != nil {
		return err
	}
	for _, f := range files {
		if !differ[f.path] {
			continue
		}
		if err := p.Transfer(ctx, m.Name, f.path, bytes.NewReader(f.data), f.mode); err != nil {
			return err
		}
	}
	action := "start"
	if len(differ) > 0 {
		action = "restart"
	}
	// A daemon-reload costs systemd a re-read of every unit: only when the
	// unit changed, and enable does not add its own.
	script := "systemctl enable --no-reload vmagent.service && systemctl " + action + " vmagent.service"
	if differ[unitPath] {
		script = "systemctl daemon-reload && " + script
	}
	if out, err := p.Exec(ctx, m.Name, nil, "sh", "-c", script); err != nil {
		return fmt.Errorf("%s: start vmagent: %w: %s", m.Name, err, out)
	}
	return nil
}

// Dial connects to the agent at addr with hostctl's client certificate,
// without waiting for it to answer.
func Dial(state *statedir.Dir, addr string) (*agentclient.Client, error) {
	tlsCfg, err := ClientTLS(state, addr)
	if err != nil {
		return nil, err
	}
	return agentclient.Dial(net.JoinHostPort(addr, AgentPort), tlsCfg)
}

// ClientTLS is the client side of mTLS to the agent at addr: hostctl's
// client certificate and the agent CA it pins, both in state.
func ClientTLS(state *statedir.Dir, addr string) (*tls.Config, error) {
	ca, err := state.AgentCA()
	if err != nil {
		return nil, err
	}
	cert, err := state.ClientCert(ca)
	if err != nil {
		return nil, err
	}
	return mtls.ClientConfig(cert.Cert, cert.Key, ca.CertPEM(), addr)
}

// Connect dials m's agent and waits until it answers (it may be starting).
func Connect(ctx context.Context, state *statedir.Dir, m machine.Machine) (*agentclient.Client, error) {
	if m.Address() == "" {
		return nil, fmt.Errorf("%s has no address: check that it is running", m.Name)
	}
	c, err := Dial(state, m.Address())
	if err != nil {
		return nil, err
	}
	if err := waitAgent(ctx, c); err != nil {
		c.Close()
		return nil, reason.Wrap(fmt.Errorf("%s: %w", m.Name, err), reason.AgentNotAnswering)
	}
	return c, nil
}

func waitAgent(ctx context.Context, c *agentclient.Client) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := c.Version(cctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agent not answering after 30s: %w", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// RemoveAgent leaves a machine that is not ours to delete (one brought over
// SSH) as it was: the agent reverts the postinst (sidecar stopped, capture
// rules, hosts block, delivered files, the user and group it created), then
// the agent itself, its unit, certificates and state are removed.
func RemoveAgent(ctx context.Context, d Deps, m machine.Machine) error {
	c, err := Connect(ctx, d.State, m)
	if err != nil {
		return err
	}
	defer c.Close()
	return RemoveAgentWith(ctx, d.Provider, c, m)
}

// RemoveAgentWith is RemoveAgent through a client already connected to m's
// agent (closed by its owner).
func RemoveAgentWith(ctx context.Context, p machine.Provider, c *agentclient.Client, m machine.Machine) error {
	steps, err := c.Uninstall(ctx, false)
	if err != nil {
		return fmt.Errorf("%s: uninstall: %w", m.Name, err)
	}
	for _, st := range steps {
		if st.GetOutcome() == agentv1.StepOutcome_STEP_OUTCOME_FAILED {
			return fmt.Errorf("%s: uninstall step %s: %s", m.Name, st.GetName(), st.GetDetail())
		}
	}
	const script = "systemctl disable --now vmagent.service 2>/dev/null || true; " +
		"rm -f /usr/local/bin/vmagent /etc/systemd/system/vmagent.service; rm -rf /etc/meshvm /var/lib/meshvm; systemctl daemon-reload"
	if out, err := p.Exec(ctx, m.Name, nil, "sh", "-c", script); err != nil {
		return fmt.Errorf("%s: remove vmagent: %w: %s", m.Name, err, out)
	}
	return nil
}
