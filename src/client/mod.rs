//! Host-side connections to the agent, used by volumectl.
