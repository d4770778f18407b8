package vmcore

import (
	"context"
	"errors"
	"time"

	"github.com/meshvm/meshvm/pkg/host/agentclient"
	"github.com/meshvm/meshvm/pkg/host/onboard"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
)

// Renewal is what RenewToken did.
type Renewal struct {
	// Kept says the last token has more than half its life left: nothing
	// was issued.
	Kept bool
	// MachineState is the machine's state in lower case ("stopped").
	MachineState string
	// ExpiresAt is when the token sent expires.
	ExpiresAt time.Time
}

// RenewToken rotates VM vm's istio-token: when the last one is past half
// its life (always with force), it issues a new one bound to the VM's
// Secret, sends only that file through the agent and keeps it in the
// store. Nothing restarts: pilot-agent reads the token when it next asks
// istiod for a certificate. A capped lifetime is recorded as a TokenCapped
// event. The CLI's vm renew and a controller's rotation both call it.
func RenewToken(ctx context.Context, vm string, lifetime time.Duration, force bool, store Store, deps Deps) (Renewal, error) {
	last, err := store.Token(vm)
	if err != nil {
		return Renewal{}, err
	}
	if !force && workload.Reusable(ctx, deps.Kube.Kube, last, deps.Workload, vm, lifetime) {
		return Renewal{Kept: true}, nil
	}
	m, err := deps.Machines.Info(ctx, vm)
	if err != nil {
		return Renewal{}, err
	}
	c, err := DialAgent(m, store)
	switch {
	case errors.Is(err, ErrNotRunning):
		return Renewal{MachineState: m.State.Lower()}, ErrNotRunning
	case err != nil:
		return Renewal{}, err
	}
	defer c.Close()
	tok, err := workload.IssueToken(ctx, deps.Kube.Kube, deps.Workload, vm, lifetime)
	if err != nil {
		return Renewal{}, err
	}
	if tok.Capped != "" && deps.Record != nil {
		deps.Record(Event{Condition: Credentials, Reason: TokenCapped, Message: tok.Capped})
	}
	if _, err := c.PutFile(ctx, agentclient.BytesFile(onboard.TokenPath, tok.Raw)); err != nil {
		return Renewal{}, err
	}
	if err := store.SetToken(vm, tok.Raw); err != nil {
		return Renewal{}, err
	}
	return Renewal{ExpiresAt: tok.ExpiresAt}, nil
}

// Booting records, before VM vm's machine is powered on, the WorkloadEntry
// its last boot's proxy left at addr: its sidecar starts again with the
// machine, and until the entry shows a newer connection and health report,
// its Healthy is the old proxy's.
func Booting(ctx context.Context, vm, addr string, store Store, deps Deps) error {
	if deps.Now == nil {
		deps.Now = time.Now
	}
	r := Restart{At: deps.Now()}
	if addr != "" {
		e, found, err := workload.FindEntry(ctx, deps.Kube, deps.Workload, addr)
		if err != nil {
			return err
		}
		if found {
			r.EntryBeforeRestart, r.EntryConnectedAt, r.EntryProbedAt = e.Name, e.ConnectedAt, e.ProbedAt
		}
	}
	return store.SetLastRestart(vm, r)
}
