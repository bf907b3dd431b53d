-- Where a price version came from: the catalogue file (published at start) or an admin's
-- change through the dashboard. A restart republishes the catalogue only when the file's price
-- itself changed, so an admin's later change is not undone by the unchanged file.
ALTER TABLE route_prices
    ADD COLUMN source text NOT NULL DEFAULT 'catalogue' CHECK (source IN ('catalogue', 'admin'));
CREATE INDEX route_prices_source_latest_idx
    ON route_prices (route, source, valid_from DESC, id DESC);
