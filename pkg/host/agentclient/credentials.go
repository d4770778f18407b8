package agentclient

import (
	"context"
	"errors"

	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

// errFirst ends a Watch after its first message.
var errFirst = errors.New("first message taken")

// Credentials are the VM's workload certificate and istio-token as its
// agent reads them (nil while there is none): the first message of a Watch,
// which the agent answers from its shared look, or GetStatus from an agent
// that does not stream.
func (c *Client) Credentials(ctx context.Context) (*agentv1.CertificateInfo, *agentv1.TokenInfo, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the stream
	var first *agentv1.WatchResponse
	err := c.Watch(ctx, &agentv1.WatchRequest{}, func(r *agentv1.WatchResponse) error { first = r; return errFirst })
	switch {
	case errors.Is(err, errFirst):
		return first.GetWorkloadCertificate(), first.GetToken(), nil
	case errors.Is(err, ErrNoWatch):
		st, err := c.Status(ctx)
		return st.GetWorkloadCertificate(), st.GetToken(), err
	}
	return nil, nil, err
}
