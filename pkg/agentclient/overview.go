package agentclient

import (
	"context"
	"sync"

	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

// Overview is what `hostctl vm status` shows from one agent.
type Overview struct {
	Status *agentv1.GetStatusResponse
	// StatusErr set means the agent did not answer; the rest is then empty.
	StatusErr error
	// DNS is istiod's name resolved on the VM; App the app's probe.
	DNS *agentv1.ResolveDNSResponse
	App *agentv1.ProbeResponse
}

// Overview asks the agent for its status, resolves name and probes the app,
// the three at once: vm status over many VMs waits for the slowest call of
// each, not their sum.
func (c *Client) Overview(ctx context.Context, name string, probe *agentv1.ProbeRequest) Overview {
	var o Overview
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); o.Status, o.StatusErr = c.Status(ctx) }()
	go func() {
		defer wg.Done()
		o.DNS, _ = c.api.ResolveDNS(ctx, &agentv1.ResolveDNSRequest{Name: name})
	}()
	go func() { defer wg.Done(); o.App, _ = c.api.Probe(ctx, probe) }()
	wg.Wait()
	if o.StatusErr != nil {
		o.DNS, o.App = nil, nil
	}
	return o
}
