"""The billing service: prepaid credits, holds, settlement and a double-entry journal."""
