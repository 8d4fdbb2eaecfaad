"""The MCP door: ``memctl mcp`` serves one user's memories to an assistant as MCP tools.

- ``app.mcp.tools`` builds the server (the official ``mcp`` SDK's ``MCPServer``): eight tools,
  each a thin call of ``MemoryService`` or ``Retrieval`` for the configured user.
- ``app.mcp.serve`` serves it over stdio, or over streamable HTTP behind the API's keys.

The user id comes from the server's configuration (``MCP_USER_ID`` or ``--user-id``), never from
a tool argument, so a model cannot read or change another user's memories.
"""
