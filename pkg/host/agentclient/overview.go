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
	// DNS is istiod's name resolved on the VM; App the app's probe. DNSErr
	// and AppErr say why one is missing (an agent too old for the call, say).
	DNS    *agentv1.ResolveDNSResponse
	DNSErr error
	App    *agentv1.ProbeResponse
	AppErr error
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
		o.DNS, o.DNSErr = c.ResolveDNS(ctx, &agentv1.ResolveDNSRequest{Name: name})
	}()
	go func() { defer wg.Done(); o.App, o.AppErr = c.Probe(ctx, probe) }()
	wg.Wait()
	if o.StatusErr != nil {
		o.DNS, o.DNSErr, o.App, o.AppErr = nil, nil, nil, nil
	}
	return o
}
